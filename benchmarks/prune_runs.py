"""Tabulate `pgbert prune` run folders from their report.json: method, one shot, every dev check of the
re-finetune (the last at the end of training), the kept (best) check and the last; with --paired REF, each
run's one-shot, kept and last scores minus REF's, matched by seed (the runs' config.seed), with
wins-ties-losses and a paired t-test.

    python benchmarks/prune_runs.py runs/pgb088-2epkd-lr1e-4-s{0,1,2} --paired runs/pgb088-2epkd-s{0,1,2}
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from pgbert.comparison import paired, record
from pgbert.tasks import get_task


def row(folder: str) -> dict:
    report = Path(folder) / "report.json"
    if not report.is_file():
        _fail(f"{report} does not exist: list finished `pgbert prune` output folders")
    r = json.loads(report.read_text())
    m = r["metrics"]
    metric = get_task(r["task"]).main_metric
    hist = [h[metric] for h in m.get("finetune_history", [])]
    if not hist:
        _fail(f"{folder} was not re-finetuned (--finetune-epochs 0): list re-finetuned runs only")
    return {
        "run": folder,
        "method": r["method"],
        "seed": r["config"]["seed"],
        "lr": r["config"]["lr"],
        "oneshot": m["pruned"][metric],
        "checks": hist,
        "kept": m["finetuned"][metric],
        "last": hist[-1],
        "finetune_s": r["timings_s"].get("finetune"),
        "dropped": len(r.get("dropped_sublayers", [])),
    }


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--paired", nargs="+", default=[], help="reference runs, matched by seed")
    a = p.parse_args()
    rows, refs = [row(f) for f in a.runs], {r["seed"]: r for r in map(row, a.paired)}
    print(
        "| run | method | seed | lr | one shot | dev checks | kept | last | minus ref: one shot / kept / last "
        "| sublayers dropped | re-finetune s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = refs.get(r["seed"])
        diff = " / ".join(f"{100 * (r[k] - ref[k]):+.1f}" for k in ("oneshot", "kept", "last")) if ref else ""
        checks = " / ".join(f"{c:.3f}" for c in r["checks"])
        print(
            f"| {r['run']} | {r['method']} | {r['seed']} | {r['lr']:g} | {r['oneshot']:.3f} | {checks} "
            f"| {r['kept']:.3f} | {r['last']:.3f} | {diff} | {r['dropped']} | {r['finetune_s']:.0f} |"
        )
    for key in ("oneshot", "kept", "last"):
        line = f"mean {key}: {statistics.mean(r[key] for r in rows):.4f}"
        pairs = paired(_as_compare_rows(rows, refs, key), ref="run", against=("ref",))
        for pair in pairs:  # none where no reference shares a run's seed
            line += f"  minus ref {100 * pair['finetuned']:+.2f} points ({record(pair, 'finetuned')})"
        print(line)


def _as_compare_rows(rows: list[dict], refs: dict, key: str) -> list[dict]:
    """Runs and references as compare rows of methods "run" and "ref" whose re-finetuned value is key."""
    both = [("run", r) for r in rows] + [("ref", r) for r in refs.values()]
    return [
        {"method": m, "seed": r["seed"], "sparsity": 0.0, "oneshot": r["oneshot"], "finetuned": r[key]}
        for m, r in both
    ]


if __name__ == "__main__":
    main()

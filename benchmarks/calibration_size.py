"""Does more calibration data help PGB? The one-shot results of `pgbert prune --calib-samples N --seed K` run
folders (any sizes; a re-finetuned run's one-shot result counts), optionally with PGB's rows of a `pgbert
compare` results.json (same sparsity and seeds, its own --calib-samples), paired by seed, smallest against
largest size. With the same seed the smaller draw is the first part of the larger one; the importance estimate,
the drop check's held-out batches and compensation (on the whole draw since session 14; on the first 512
examples before) differ.

    python benchmarks/calibration_size.py --compare benchmarks/results/compare12-amazon.json \
        runs/amz088-c512-s0 runs/amz088-c512-s1 runs/amz088-c512-s2
    python benchmarks/calibration_size.py --ablation 2048=a.json 4096=b.json   # benchmarks/ablation.py's `full`
"""

import argparse
import json
import statistics
from pathlib import Path

from render_compare import configs_of
from scipy import stats


def run_row(folder: str, metric: str) -> dict:
    rep = json.loads((Path(folder) / "report.json").read_text())
    return {
        "folder": folder,
        "seed": rep["config"]["seed"],
        "sparsity": rep["config"]["sparsity"],
        "calib_samples": rep["calibration"]["examples"],
        "masked": rep["metrics"]["masked"][metric],
        "oneshot": rep["metrics"]["pruned"][metric],
        "dropped_sublayers": rep["dropped_sublayers"],
        "prune_seconds": sum(v for k, v in rep["timings_s"].items() if k != "finetune"),
    }


def compare_rows(path: str, sparsity: float, seeds: set[int]) -> list[dict]:
    res = json.loads(Path(path).read_text())
    sizes = {c["calib_samples"] for c in configs_of(res)}
    if len(sizes) != 1:
        raise SystemExit(f"--compare {path}: its runs used different --calib-samples {sorted(sizes)}")
    n = sizes.pop()
    keep = [
        r
        for r in res["rows"]
        if r["method"] == "pgb" and r.get("sparsity") == sparsity and r["seed"] in seeds
    ]
    return [
        {**{k: r[k] for k in ("seed", "masked", "oneshot", "dropped_sublayers")}, "calib_samples": n}
        for r in keep
    ]


def ablation_rows(arg: str, sparsity: float) -> list[dict]:
    """`full`'s rows at `sparsity` in a benchmarks/ablation.py JSON, given as N=path (N: the calibration examples
    that run used, the count its log prints; a split smaller than --calib-samples uses all of it)."""
    n, _, path = arg.partition("=")
    if not n.isdigit() or not path:
        raise SystemExit(f"--ablation {arg}: give N=path (N: the calibration examples used)")
    rows = json.loads(Path(path).read_text())["rows"]
    keep = [r for r in rows if r["variant"] == "full" and r.get("sparsity") == sparsity]
    if not keep:
        raise SystemExit(f"--ablation {arg}: no `full` rows at {sparsity}; pass --sparsity")
    return [
        {
            **{k: r[k] for k in ("seed", "masked", "oneshot")},
            "dropped_sublayers": r["dropped"],
            "calib_samples": int(n),
        }
        for r in keep
    ]


def table(rows: list[dict]) -> str:
    """One line per calibration size over the seeds run at every size, then largest minus smallest, paired."""
    by = {(r["calib_samples"], r["seed"]): r for r in rows}
    sizes = sorted({r["calib_samples"] for r in rows})
    seeds = sorted(set.intersection(*({s for n, s in by if n == size} for size in sizes)))
    lines = [
        "| calibration examples | one shot by seed | mean | masks only (mean) | sublayers dropped |",
        "|---|---|---|---|---|",
    ]
    for n in sizes:
        rs = [by[n, s] for s in seeds]
        lines.append(
            f"| {n:,} | "
            + " / ".join(f"{r['oneshot']:.3f}" for r in rs)
            + f" | {statistics.mean(r['oneshot'] for r in rs):.3f} | {statistics.mean(r['masked'] for r in rs):.3f} | "
            + " / ".join(str(len(r["dropped_sublayers"])) for r in rs)
            + " |"
        )
    d = [by[sizes[-1], s]["oneshot"] - by[sizes[0], s]["oneshot"] for s in seeds]
    p = f"; p {stats.ttest_1samp(d, 0.0).pvalue:.2f}" if len(d) > 2 else ""  # paired t-test from 3 seeds
    lines.append(
        f"\n{sizes[-1]:,} minus {sizes[0]:,}, paired: {100 * statistics.mean(d):+.1f} points ("
        + ", ".join(f"{100 * x:+.1f}" for x in d)
        + f"{p})"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="pgbert prune run folders (one shot), one per seed")
    p.add_argument(
        "--ablation", nargs="+", default=[], help="N=path: benchmarks/ablation.py JSONs, N examples"
    )
    p.add_argument("--sparsity", type=float, default=0.88, help="with --ablation alone: the sparsity to read")
    p.add_argument("--compare", help="pgbert compare results.json holding PGB at the same sparsity")
    p.add_argument("--metric", default="accuracy", help="the task's main metric (pearson for rt-score)")
    p.add_argument("--json", help="write the rows")
    a = p.parse_args()
    runs = [run_row(f, a.metric) for f in a.runs]
    sparsity = runs[0]["sparsity"] if runs else a.sparsity  # run folders name their own sparsity
    runs += [r for x in a.ablation for r in ablation_rows(x, sparsity)]
    if not runs:
        raise SystemExit("give pgbert prune run folders or --ablation N=path")
    extra = compare_rows(a.compare, sparsity, {r["seed"] for r in runs}) if a.compare else []
    print(table(runs + extra), end="")
    if a.json:
        Path(a.json).write_text(
            json.dumps({"compare": a.compare, "runs": runs, "compare_rows": extra}, indent=2)
        )

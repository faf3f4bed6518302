"""Render one or more `pgbert compare` results.json files (same model, task and dense score: e.g. the
baselines and PGB run as separate compares) as one markdown report (summary and paired tables), with an
optional plot:

    python benchmarks/render_compare.py runs/compare11-oneshot/results.json > benchmarks/results/compare-minilm-rt.md
    python benchmarks/render_compare.py runs/cmp-amazon-base/results.json runs/cmp-amazon-pgb/results.json \
        --json benchmarks/results/compare-amazon.json --png benchmarks/results/compare-amazon.png
    python benchmarks/render_compare.py old/results.json pgb-rerun/results.json --replace --json merged.json

--keep-start re-scores rows written before session 29 as stage 6 now scores them: a re-finetune that no
dev check lifted above the one-shot model returns the one-shot model. Exact, not an estimate: the one-shot
score is the dev check at step 0, and the extra check changes nothing in training.
"""

import argparse
import json

from pgbert.comparison import budget_of, markdown, paired, plot, record, summarise


def configs_of(res: dict) -> list[dict]:
    """Each run's config in a compare result: one for a results.json, a list for a file merged here."""
    return res.get("configs") or [res["config"]]


def merge(paths: list[str], replace: bool = False) -> dict:
    """One result from several compares of the same fine-tune. The same method, budget and seed in two
    files is an error, or with replace=True the later file's row wins (a method re-run after a change,
    paired against the earlier baselines: the calibration draw depends only on the seed); the replaced
    rows are listed under "replaced"."""
    runs = [json.load(open(p)) for p in paths]
    for r in runs[1:]:
        if (r["task"], r["dense"]) != (runs[0]["task"], runs[0]["dense"]):
            raise SystemExit(f"results differ in task or dense score: {paths}")
    by_key: dict = {}
    replaced = []  # this merge's (a merged input's own list stays in its file)
    for path, r in zip(paths, runs):
        for row in r["rows"]:
            key = (row["method"], budget_of(row), row["seed"])
            if key in by_key:
                if not replace:
                    raise SystemExit("the same method, budget and seed appear in more than one file")
                replaced.append(
                    {"method": key[0], "budget": key[1], "seed": key[2], "by": path, "row": by_key[key]}
                )
            by_key[key] = row
    rows = list(by_key.values())
    return {
        "model": runs[0]["model"],
        "task": runs[0]["task"],
        "dense": runs[0]["dense"],
        "configs": [c for r in runs for c in configs_of(r)],
        "sources": [s for p, r in zip(paths, runs) for s in (r.get("sources") or [p])],
        "rows": rows,
        "replaced": replaced,
        "seconds": sum(r["seconds"] for r in runs),
    }


def keep_start_rows(rows: list[dict]) -> list[dict]:
    """Rows re-scored with the one-shot model competing as each re-finetune's step-0 check (a no-op on
    rows written with keep_start, and on one-shot-only rows, whose "finetuned" is their one-shot score)."""
    out = []
    for r in rows:
        if "oneshot" not in r:  # an unreachable speed: no scores
            out.append(r)
            continue
        runs = [max(r["oneshot"], x) for x in r.get("finetuned_runs") or [r["finetuned"]]]
        out.append({**r, "finetuned": sum(runs) / len(runs), "finetuned_runs": runs})
    return out


def start_kept(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """Per method, (re-finetunes whose checks all scored below the one-shot model, re-finetunes): the ones
    keep_start returns the one-shot model for. Rows written with keep_start say so themselves."""
    out: dict[str, tuple[int, int]] = {}
    for r in rows:
        if "finetune_best_steps" in r:
            kept = [step == 0 for step in r["finetune_best_steps"]]
        elif "oneshot" in r:
            kept = [x < r["oneshot"] for x in r.get("finetuned_runs") or [r["finetuned"]]]
        else:
            continue
        k, n = out.get(r["method"], (0, 0))
        out[r["method"]] = (k + sum(kept), n + len(kept))
    return out


def rerun_table(res: dict) -> str:
    """Each re-run method minus the rows it replaced, paired by seed (points): what the change bought."""
    old = [{**r["row"], "method": r["method"] + " (replaced)"} for r in res["replaced"]]
    lines = [
        "| method | budget | seeds | re-run minus replaced, one shot | re-finetuned |",
        "|---|---|---|---|---|",
    ]
    for m in sorted({r["method"] for r in res["replaced"]}):
        for p in paired(res["rows"] + old, ref=m, against=(m + " (replaced)",)):
            cells = [f"{100 * p[k]:+.1f} ({record(p, k)})" for k in ("oneshot", "finetuned")]
            lines.append(f"| {m} | {p['budget']} {p['target']:g} | {p['seeds']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def report(a: argparse.Namespace) -> str:
    """The markdown report; writes --json and --png only once the files are known to merge."""
    res = merge(a.results, a.replace)
    if a.keep_start:
        res["rows"] = keep_start_rows(res["rows"])
    finetune_seeds = {c.get("finetune_seeds", 1) for c in res["configs"]}
    if len(finetune_seeds) > 1:
        raise SystemExit(
            f"the files mix re-finetunes per pruned model ({sorted(finetune_seeds)}); merge like with like"
        )
    rows = res["rows"]
    metric = rows[0]["metric"] if rows else "accuracy"
    summary, pairs = summarise(rows), paired(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**res, "summary": summary, "paired": pairs}, f, indent=2)
    if a.png:
        plot(summary, a.png, metric)
    refinetuned = all(c.get("finetune_epochs", 1) > 0 for c in res["configs"])
    text = markdown(summary, res["dense"], metric, pairs, refinetuned, finetune_seeds.pop())
    return text + ("\n" + rerun_table(res) if res["replaced"] else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+")
    p.add_argument("--json", help="write the merged rows with their summary and paired tables")
    p.add_argument("--png", help="write the plot of accuracy against measured speedup")
    p.add_argument(
        "--replace",
        action="store_true",
        help="a later file's row replaces an earlier one's (same method, budget, seed)",
    )
    p.add_argument(
        "--keep-start", action="store_true", help="re-score re-finetunes as stage 6 has since session 29"
    )
    a = p.parse_args()
    try:
        text = report(a)
    except SystemExit as e:  # bad files: one line and exit code 2, as for bad arguments
        p.exit(2, f"error: {e.code}\n")
    print(text, end="")


if __name__ == "__main__":
    main()

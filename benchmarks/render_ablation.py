"""Render benchmarks/ablation.py's JSON as a markdown table: each variant's metric by seed (one shot and, where
run, re-finetuned), its mean, and its difference from the reference variant paired by seed (wins-ties-losses,
paired t-test p), as `pgbert compare` pairs methods.

    python benchmarks/render_ablation.py runs/abl-rt-088-ft.json [--reference full] [--output table.md]
    python benchmarks/render_ablation.py A.json B.json   # variants run apart (same model, task, seeds)
    python benchmarks/render_ablation.py B.json --compare C.json   # `full` = a compare's PGB rows (same seeds)
    python benchmarks/render_ablation.py B.json --compare C1.json C2.json --baselines structured-fisher
        # compares at several budgets; a baseline's rows join the table as one more variant

Re-finetuned columns appear only when every row was re-finetuned.
"""

from __future__ import annotations

import argparse
import json
import statistics

from pgbert.comparison import paired, record


def as_compare_rows(rows: list[dict]) -> list[dict]:
    """Ablation rows in `pgbert compare`'s row shape (a variant plays a method). A one-shot-only ablation
    repeats the one-shot metric as "finetuned" so the pairing runs; the table leaves those columns out."""
    return [
        {
            "method": r["variant"],
            "seed": r["seed"],
            "budget": "speedup" if r.get("sparsity") is None else "sparsity",
            "target": r["sparsity"] if r.get("sparsity") is not None else float(r["budget"].split()[1][:-1]),
            "oneshot": r["oneshot"],
            "finetuned": r["oneshot"] if r["finetuned"] is None else r["finetuned"],
            "masked": r["masked"],
            "dropped": len(r["dropped"]),
        }
        for r in rows
    ]


def full_row(r: dict) -> dict:
    """A compare's row as an ablation row: PGB's as the variant `full` (PGB as shipped when it ran), another
    method's under its own name."""
    return {
        "variant": "full" if r["method"] == "pgb" else r["method"],
        "seed": r["seed"],
        "sparsity": r["sparsity"],
        "budget": f"s={r['sparsity']:.2f}",
        "masked": r["masked"],
        "oneshot": r["oneshot"],
        "finetuned": r["finetuned"],
        "finetuned_runs": r.get("finetuned_runs"),
        "dropped": r["dropped_sublayers"],
    }


def table(data: dict, reference: str = "full", metric: str = "accuracy") -> str:
    rows = as_compare_rows(data["rows"])
    tuned = all(r["finetuned"] is not None for r in data["rows"])
    head = f"| variant | one-shot {metric} (by seed) | mean | minus {reference} |"
    rule = "|---|---|---|---|"
    if tuned:
        head += f" re-finetuned (by seed) | mean | minus {reference} |"
        rule += "---|---|---|"
    lines = [f"Dense {metric}: {data['dense']:.4f}"]
    for budget in sorted({(r["budget"], r["target"]) for r in rows}):
        lines += [
            "",
            f"{budget[0]} {budget[1]:g}:",
            "",
            head + " masks only | sublayers dropped |",
            rule + "---|---|",
        ]
        at = [r for r in rows if (r["budget"], r["target"]) == budget]
        for v in dict.fromkeys(r["method"] for r in at):
            rs = sorted((r for r in at if r["method"] == v), key=lambda r: r["seed"])
            pair = next(iter(paired(at, ref=v, against=(reference,))), None) if v != reference else None
            cells = [v]
            for half in ("oneshot", "finetuned") if tuned else ("oneshot",):
                vals = [r[half] for r in rs]
                cells += [" / ".join(f"{x:.3f}" for x in vals), f"{statistics.mean(vals):.3f}"]
                cells.append(f"{100 * pair[half]:+.1f} ({record(pair, half)})" if pair else "")
            cells += [
                f"{statistics.mean(r['masked'] for r in rs):.3f}",
                " / ".join(str(r["dropped"]) for r in rs),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results", nargs="+", help="benchmarks/ablation.py --json outputs (rows are merged)")
    p.add_argument("--reference", default="full", help="the variant every other is paired against")
    p.add_argument("--metric", default="accuracy", help="the metric's name in the table's header")
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        help="`pgbert compare` results JSONs whose PGB rows (same model, task and seeds) stand in as `full`",
    )
    p.add_argument("--baselines", nargs="+", default=[], help="with --compare: these methods' rows too")
    p.add_argument("--output", help="also write the table here")
    a = p.parse_args()
    runs = []
    for path in a.results:
        with open(path) as f:
            runs.append(json.load(f))
    budgets = {r["sparsity"] for run in runs for r in run["rows"]}
    have = {(r["variant"], r["seed"], r["sparsity"]) for run in runs for r in run["rows"]}
    methods = {"pgb", *a.baselines}
    for path in a.compare:
        with open(path) as f:
            c = json.load(f)
        rows = [full_row(r) for r in c["rows"] if r["method"] in methods and r.get("sparsity") in budgets]
        rows = [r for r in rows if (r["variant"], r["seed"], r["sparsity"]) not in have]  # the ablation's own
        runs.append({"dense": c["dense"], "rows": rows})
    if len({r["dense"] for r in runs}) > 1:
        p.error("these files were measured on different dense models; render them apart")
    per_set = {
        len(r.get("finetuned_runs") or [0]) for run in runs for r in run["rows"] if r["finetuned"] is not None
    }
    if len(per_set) > 1:
        p.error(
            f"these files score mask sets by different numbers of re-finetunes {sorted(per_set)}; rerun alike"
        )
    text = table(
        {"dense": runs[0]["dense"], "rows": [r for run in runs for r in run["rows"]]}, a.reference, a.metric
    )
    print(text, end="")
    if a.output:
        with open(a.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

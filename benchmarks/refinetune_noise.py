"""How much of a re-finetuned comparison is the re-finetune's own noise: reads `pgbert compare
--finetune-seeds N` results (each pruned model re-finetuned N times, seeds K, K + 1000, ...) and prints, per
method and budget, every re-finetune of every mask set, the spread within a mask set (the re-finetune's noise)
and between mask sets (the calibration draw's), then PGB minus each baseline paired by calibration seed twice:
scored by the first re-finetune only (what a plain compare measures) and by the mean of the N.

    python benchmarks/refinetune_noise.py runs/cmp26-rt-088-ft3/results.json
"""

import json
import math
import statistics
from pathlib import Path

import early_stopping

from pgbert.comparison import budget_label, paired, record


def spread(rows: list[dict]) -> tuple[float, float]:
    """(within, between): the pooled std of the re-finetunes around their mask set's mean, and the std of
    the mask sets' means over calibration seeds (0 with one seed)."""
    within = math.sqrt(statistics.mean(statistics.variance(r["finetuned_runs"]) for r in rows))
    means = [statistics.mean(r["finetuned_runs"]) for r in rows]
    return within, statistics.stdev(means) if len(means) > 1 else 0.0


def first_rows(rows: list[dict]) -> list[dict]:
    """The rows scored by their first re-finetune only (seed K: exactly a compare without --finetune-seeds)."""
    return [{**r, "finetuned": r["finetuned_runs"][0]} for r in rows]


def table(path: str) -> list[str]:
    res = json.loads(Path(path).read_text())
    rows = [r for r in res["rows"] if len(r.get("finetuned_runs") or []) > 1]
    if not rows:
        return [f"{path}: no row has two or more re-finetunes (run compare with --finetune-seeds 2 or more)"]
    metric = rows[0]["metric"]
    lines = [
        f"{path} (dense {res['dense']:.4f}, {metric}; points = 100 x {metric})",
        "",
        "| method | budget | one shot | re-finetunes per mask set (calibration seed: runs) | mean | "
        "within a mask set (std, points) | between mask sets (std of means) |",
        "|---|---|---|---|---|---|---|",
    ]
    cells = sorted({(r["method"], budget_label(r)) for r in rows})
    for method, budget in cells:
        mine = sorted(
            (r for r in rows if (r["method"], budget_label(r)) == (method, budget)), key=lambda r: r["seed"]
        )
        within, between = spread(mine)
        runs = "; ".join(f"{r['seed']}: " + " / ".join(f"{x:.3f}" for x in r["finetuned_runs"]) for r in mine)
        lines.append(
            f"| {method} | {budget} | {statistics.mean(r['oneshot'] for r in mine):.4f} | {runs} | "
            f"{statistics.mean(r['finetuned'] for r in mine):.4f} | {100 * within:.1f} | {100 * between:.1f} |"
        )
    lines += [
        "",
        "PGB minus each baseline, paired by calibration seed (points; wins-ties-losses, p):",
        "",
        "| vs | budget | one shot | re-finetuned, first re-finetune only | re-finetuned, mean of the re-finetunes |",
        "|---|---|---|---|---|",
    ]
    first = {(p["baseline"], budget_label(p)): p for p in paired(first_rows(rows))}
    for p in paired(rows):
        f = first[p["baseline"], budget_label(p)]
        lines.append(
            f"| {p['baseline']} | {budget_label(p)} | {100 * p['oneshot']:+.1f} ({record(p, 'oneshot')}) | "
            f"{100 * f['finetuned']:+.1f} ({record(f, 'finetuned')}) | "
            f"{100 * p['finetuned']:+.1f} ({record(p, 'finetuned')}) |"
        )
    return lines


if __name__ == "__main__":
    early_stopping.main(table, __doc__)

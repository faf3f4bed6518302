"""Paired one-shot table from compare rows that come from results.json files and/or the row lines of a
compare log (a run stopped before it wrote results.json: its finished rows are in the log):

    python benchmarks/paired_partial.py runs/compare11-oneshot/results.json runs/cmp-rt-pgb.log --use pgb=1

Rows of a method may come from one source only; `--use METHOD=SOURCE_INDEX` picks which source's rows of
METHOD are used when several have it (e.g. the new PGB rows from the log, the baselines from an older run).
"""

import argparse
import json
import re
import statistics

from pgbert.comparison import paired

LINE = re.compile(
    r"^(?P<method>\S+)\s+s=(?P<s>[\d.]+) seed=(?P<seed>\d+): one-shot (?P<oneshot>[\d.]+)\s+re-finetuned "
    r"(?P<finetuned>[\d.]+)\s+flops (?P<flops>[\d.]+)\s+speedup (?P<speedup>[\d.]+)x\s+prune (?P<prune>\d+)s"
)


def rows_of(path: str) -> list[dict]:
    if path.endswith(".json"):
        return json.load(open(path))["rows"]
    out = []
    for line in open(path):
        m = LINE.match(line.strip())
        if m:
            out.append(
                {
                    "method": m["method"],
                    "sparsity": float(m["s"]),
                    "seed": int(m["seed"]),
                    "oneshot": float(m["oneshot"]),
                    "finetuned": float(m["finetuned"]),
                    "flops_ratio": float(m["flops"]),
                    "speedup": float(m["speedup"]),
                    "prune_seconds": float(m["prune"]),
                }
            )
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("sources", nargs="+")
    p.add_argument("--use", nargs="*", default=[], help="METHOD=INDEX of the source to take METHOD from")
    a = p.parse_args()
    use = {k: int(v) for k, v in (u.split("=") for u in a.use)}
    rows = []
    for i, src in enumerate(a.sources):
        rows += [r for r in rows_of(src) if use.get(r["method"], i) == i]
    print("| method | sparsity | seeds | one-shot (mean ± std) | per seed |")
    print("|---|---|---|---|---|")
    for s in sorted({r["sparsity"] for r in rows}):
        for m in dict.fromkeys(r["method"] for r in rows):
            rs = sorted((r for r in rows if r["method"] == m and r["sparsity"] == s), key=lambda r: r["seed"])
            if rs:
                v = [r["oneshot"] for r in rs]
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                per = " / ".join(f"{x:.3f}" for x in v)
                print(f"| {m} | {s:.2f} | {len(v)} | {statistics.mean(v):.4f} ± {sd:.4f} | {per} |")
    print()
    print("| PGB minus | sparsity | seeds | one-shot difference (mean ± std; wins-ties-losses) |")
    print("|---|---|---|---|")
    for r in paired(rows):
        ties = r["seeds"] - r["oneshot_wins"] - r["oneshot_losses"]
        print(
            f"| {r['baseline']} | {r['sparsity']:.2f} | {r['seeds']} | {r['oneshot']:+.4f} ± {r['oneshot_std']:.4f} "
            f"({r['oneshot_wins']}-{ties}-{r['oneshot_losses']}) |"
        )

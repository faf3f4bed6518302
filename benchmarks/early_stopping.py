"""What early stopping is worth in `pgbert compare`'s re-finetune: each row's kept (best) dev check against its
last one, paired by seed, per method and budget. Reads compare results.json files whose rows carry
`finetune_history` (compares run since session 15); rows without it are skipped.

The re-finetune checks the dev split four times and keeps the best check; judged on the same dev split, that
choice is optimistic. "best - last" is by how much, for every method alike.

    python benchmarks/early_stopping.py runs/cmp15-amazon-05/results.json runs/cmp15-rtscore-05/results.json
"""

import argparse
import json
import statistics
from pathlib import Path

from pgbert.comparison import budget_label, paired, record


def last_rows(rows: list[dict]) -> list[dict]:
    """Each row with a history twice: as kept (method name) and as the last dev check ("<name>-last")."""
    out = []
    for r in rows:
        hist = r.get("finetune_history") or []
        if not hist:
            continue
        out.append(r)
        out.append({**r, "method": r["method"] + "-last", "finetuned": hist[-1][r["metric"]]})
    return out


def table(path: str) -> list[str]:
    res = json.loads(Path(path).read_text())
    rows = last_rows(res["rows"])
    if not rows:
        return [f"{path}: no row has a finetune_history (compare from before session 15)"]
    lines = [
        f"{path} (dense {res['dense']:.4f}, {rows[0]['metric']})",
        "",
        "| method | budget | kept (best) check | last check | best - last (points) | wins-ties-losses, p "
        "| last check was kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted({r["method"] for r in rows if not r["method"].endswith("-last")}):
        for pair in paired(rows, ref=name, against=(name + "-last",)):
            mine = [r for r in rows if r["method"] == name and budget_label(r) == budget_label(pair)]
            best = statistics.mean(r["finetuned"] for r in mine)
            last = statistics.mean(r["finetune_history"][-1][r["metric"]] for r in mine)
            at_end = sum(r["finetuned"] == r["finetune_history"][-1][r["metric"]] for r in mine)
            lines.append(
                f"| {name} | {budget_label(pair)} | {best:.4f} | {last:.4f} | {100 * pair['finetuned']:+.1f} "
                f"| {record(pair, 'finetuned')} | {at_end} of {len(mine)} |"
            )
    return lines


def main(table_of=table, doc: str = __doc__) -> None:
    """Print table_of(path) for every compare results.json named on the command line (shared by the scripts
    that judge compare's re-finetunes)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="pgbert compare results.json files")
    a = p.parse_args()
    for path in a.results:
        print("\n".join(table_of(path)), end="\n\n")


if __name__ == "__main__":
    main()

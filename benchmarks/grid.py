"""Issue 12's grid: on each task, at each budget, is PGB's mean at least each baseline's, one shot and
re-finetuned? Reads `pgbert compare` results.json files (pairing stays inside a file: one fine-tune, the
same calibration draws per seed) and prints one markdown row per task:

    python benchmarks/grid.py \
        rt-sentiment=benchmarks/results/compare12-rt-0.5-0.75.json,benchmarks/results/compare12-rt-0.88.json \
        amazon-sentiment=benchmarks/results/compare12-amazon.json \
        rt-score=benchmarks/results/compare12-rtscore-0.5-0.75.json,benchmarks/results/compare12-rtscore-0.88.json

A cell reads "yes" or "**no**", then PGB minus each baseline in points (paired by seed, mean); "not run"
where no file holds that budget (or, for the re-finetuned half, only a --finetune-epochs 0 compare does).

--pool reads several files at one budget as more pairs (compares of the same task on other fine-tunes:
each pair stays inside its file) and adds each baseline's wins-ties-losses and paired t-test p.
"""

import argparse
import json

from render_compare import configs_of, keep_start_rows, start_kept

from pgbert.comparison import paired

SHORT = {"structured-fisher": "S", "kwon": "K"}


def results(paths: list[str]):
    """(path, compare result, whether it re-finetuned) for each file."""
    for path in paths:
        res = json.load(open(path))
        yield path, res, all(c.get("finetune_epochs", 1) > 0 for c in configs_of(res))


def kept_starts(paths: list[str]) -> str:
    """How many re-finetunes, per method, no dev check lifted above the one-shot model, over the files."""
    counts: dict[str, list[int]] = {}
    for _, res, refinetuned in results(paths):
        for m, (k, n) in start_kept(res["rows"]).items() if refinetuned else ():
            counts[m] = [a + b for a, b in zip(counts.get(m, [0, 0]), (k, n))]
    return ", ".join(f"{m} {k} of {n}" for m, (k, n) in sorted(counts.items()))


def cells(
    paths: list[str], keep_start: bool = False, pool: bool = False
) -> dict[tuple[float, str], list[dict]]:
    """(sparsity, "oneshot" | "finetuned") -> [{baseline, diff (PGB minus baseline), wins, ties, losses, p}],
    from every file given (keep_start: re-finetunes re-scored as stage 6 has scored them since session 29;
    pool: pairs of every file at a budget tested together, a file's seeds kept apart from another's)."""
    out: dict[tuple[float, str], list[dict]] = {}
    files = list(results(paths))
    if pool:
        if len(set(paths)) < len(paths):
            raise SystemExit("--pool: a file given twice would count its pairs twice")
        if not all(refinetuned for _, _, refinetuned in files):
            raise SystemExit("--pool needs compares that re-finetuned (--finetune-epochs > 0) in every file")
        rows = [{**r, "seed": (i, r["seed"])} for i, (_, res, _) in enumerate(files) for r in res["rows"]]
        files = [(" + ".join(paths), {"rows": rows}, True)]
    for path, res, refinetuned in files:
        rows = keep_start_rows(res["rows"]) if keep_start else res["rows"]
        for p in paired(rows):
            if p["budget"] != "sparsity":
                continue
            for half in ("oneshot", "finetuned") if refinetuned else ("oneshot",):
                key = (p["target"], half)
                if any(d["baseline"] == p["baseline"] for d in out.get(key, [])):
                    raise SystemExit(f"{path}: sparsity {p['target']} vs {p['baseline']} already given")
                wins, losses = p[half + "_wins"], p[half + "_losses"]
                out.setdefault(key, []).append(
                    {
                        "baseline": p["baseline"],
                        "diff": p[half],
                        "wins": wins,
                        "ties": p["seeds"] - wins - losses,
                        "losses": losses,
                        "p": p[half + "_p"],
                    }
                )
    return out


TIE = 1e-9  # differences of means this small are float rounding of equal means


def cell(diffs: list[dict] | None, detail: bool = False) -> str:
    if not diffs:
        return "not run"
    # a tie of equal counts (583 + 577 + 587 against 583 + 578 + 586 right on 700) can come out -4e-17
    diffs = [{**d, "diff": 0.0 if abs(d["diff"]) < TIE else d["diff"]} for d in diffs]
    diffs.sort(key=lambda d: d["baseline"])
    verdict = "yes" if all(d["diff"] >= 0 for d in diffs) else "**no**"
    if detail:  # yes: K +1.8 (6-0-0, p 0.00); S +0.2 (4-0-2, p 0.50)
        return verdict + ": " + "; ".join(f"{score(d)} ({signs(d)})" for d in diffs)
    return verdict + " (" + ", ".join(score(d) for d in diffs) + ")"


def score(d: dict) -> str:
    return f"{SHORT.get(d['baseline'], d['baseline'])} {100 * d['diff']:+.1f}"


def signs(d: dict) -> str:
    p = "" if d["p"] is None else f", p {d['p']:.2f}"
    return f"{d['wins']}-{d['ties']}-{d['losses']}{p}"


def grid(
    tasks: dict[str, list[str]], sparsities: list[float], keep_start: bool = False, pool: bool = False
) -> str:
    head = " | ".join(f"{s:g} one shot | {s:g} re-finetuned" for s in sparsities)
    lines = [f"| task | {head} |", "|---" * (1 + 2 * len(sparsities)) + "|"]
    for task, paths in tasks.items():
        c = cells(paths, keep_start, pool)
        row = [cell(c.get((s, half)), pool) for s in sparsities for half in ("oneshot", "finetuned")]
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tasks", nargs="+", help="NAME=results.json[,results.json...]")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.88])
    p.add_argument(
        "--keep-start", action="store_true", help="re-score re-finetunes as stage 6 has since session 29"
    )
    p.add_argument(
        "--pool", action="store_true", help="a task's files at one budget are more pairs (other fine-tunes)"
    )
    a = p.parse_args()
    tasks = {}
    for spec in a.tasks:
        name, _, files = spec.partition("=")
        if not files:
            p.error(f"{spec!r}: expected NAME=results.json[,results.json...]")
        tasks[name] = files.split(",")
    try:
        table = grid(tasks, a.sparsity, a.keep_start, a.pool)
    except SystemExit as e:  # bad files: one line and exit code 2, as for bad arguments
        p.exit(2, f"error: {e.code}\n")
    print(table, end="")
    print("\nS: structured Fisher, K: Kwon et al.; PGB minus the baseline, points, mean over paired seeds.")
    if a.keep_start:
        kept = kept_starts([f for paths in tasks.values() for f in paths])
        print(f"Re-finetunes that keep the one-shot model (no dev check above it): {kept}.")


if __name__ == "__main__":
    main()

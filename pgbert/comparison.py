"""Every method x every budget x seeds on the same model and data: a loop over the method registry.

Each row is a `pgbert prune --method M --sparsity S --seed K` run with compare's flags (same calibration
draw, same re-finetune); Kwon et al. (a MAC budget) get the FLOPs ratio PGB reached at that seed and
sparsity. With speedups instead of sparsities, each row is `pgbert prune --method M --speedup X`: every
method meets the same measured speed at the deployment setting. summarise() gives mean +- std per cell,
paired() PGB minus each structured baseline seed by seed.

With finetune_seeds N > 1 each pruned model is re-finetuned N times (seeds K, K + 1000, ..., the first
one exactly `pgbert prune`'s) and the row's "finetuned" is their mean: the re-finetuned score of that
mask set with less of the re-finetune's own noise ("finetuned_runs" holds each).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, replace

from torch import nn

from .bench import measure_compact
from .config import PruneConfig
from .errors import PgbertError
from .methods import METHODS, get_method
from .pipeline import calibrate, prune_model, refinetune
from .profile import Setting
from .tasks import TaskData
from .training import evaluate


@dataclass
class CompareConfig:
    sparsities: tuple[float, ...] = (0.5, 0.88)
    methods: tuple[str, ...] = METHODS
    seeds: int = 1
    calib_samples: int = 2048  # every method's calibration draw (Kwon et al.'s default, and PGB's)
    compensation_samples: int | None = None  # all of the calibration draw
    finetune_epochs: float = 0.25
    finetune_seeds: int = 1  # re-finetunes per pruned model (their mean is the row's "finetuned")
    keep_start: bool = True  # a re-finetune keeps the one-shot model when no dev check beats it
    lr: float = 5e-5
    batch_size: int = 32
    max_seq_length: int = 128
    bench_batch: int = 32
    bench_seq: int = 128
    match_flops: bool = True  # MAC-budget methods (kwon) get the FLOPs ratio PGB reached, same seed and s
    # speedups instead of sparsities: every method pruned to a measured speed at this deployment setting
    speedups: tuple[float, ...] = ()
    device: str = "cpu"
    threads: int = 0
    target_batch_size: int = 32
    target_seq_len: int = 128
    dtype: str = "float32"
    quiet: bool = False

    @property
    def budgets(self) -> list[tuple[str, float]]:
        """(kind, value) of every budget: ("speedup", x) when speedups are given, else ("sparsity", s)."""
        if self.speedups:
            return [("speedup", x) for x in self.speedups]
        return [("sparsity", s) for s in self.sparsities]

    def validate(self) -> None:
        bad = [s for s in self.sparsities if not 0 < s < 1]
        if bad:
            raise PgbertError(f"every --sparsity must be in (0, 1); got {bad}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PgbertError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if self.seeds < 1:
            raise PgbertError(f"--seeds must be at least 1, got {self.seeds}")
        if self.finetune_seeds < 1:
            raise PgbertError(f"--finetune-seeds must be at least 1, got {self.finetune_seeds}")
        for m in self.methods:  # a method without a latency budget cannot be compared at a speed
            for kind, value in self.budgets:
                self.prune_config(m, 0, **{kind: value}).validate()

    def prune_config(
        self, method: str, seed: int, sparsity: float | None = None, flops_ratio=None, speedup=None
    ):
        """The PruneConfig that `pgbert prune --method METHOD` builds from the same flags."""
        return PruneConfig(
            sparsity=sparsity,
            flops_ratio=flops_ratio,
            speedup=speedup,
            device=self.device,
            threads=self.threads,
            target_batch_size=self.target_batch_size,
            target_seq_len=self.target_seq_len,
            dtype=self.dtype,
            method=method,
            calib_samples=self.calib_samples,
            compensation_samples=self.compensation_samples,
            finetune_epochs=self.finetune_epochs,
            keep_start=self.keep_start,
            lr=self.lr,
            batch_size=self.batch_size,
            max_seq_length=self.max_seq_length,
            seed=seed,
            quiet=True,
        )


def run(
    dense: nn.Module, tokenizer, data: TaskData, cfg: CompareConfig, log=print, on_row=None
) -> list[dict]:
    """All rows (method x sparsity x seed), each exactly a `pgbert prune --method` run: a loop over the
    method registry with no method logic of its own. Each method's importance is computed once per seed
    and reused for every budget (prune_model gives the same result either way)."""
    cfg.validate()
    dense_metrics = evaluate(dense, tokenizer, data, max_seq_length=cfg.max_seq_length)
    main = data.spec.main_metric
    order = sorted(cfg.methods, key=lambda m: get_method(m).budget == "macs")  # weight budgets first
    rows: list[dict] = []
    for seed in range(cfg.seeds):
        for name in order:
            method = get_method(name)
            base = cfg.prune_config(name, seed, **dict([cfg.budgets[0]]))
            calib = calibrate(data, tokenizer, dense, base, method.sampling)
            t = time.perf_counter()
            scores = (method.importance(dense, calib, base), time.perf_counter() - t)
            for kind, value in cfg.budgets:
                if kind == "speedup":
                    pcfg = replace(base, speedup=value)
                    setting = pcfg.setting()
                else:
                    pcfg = replace(
                        base, sparsity=value, flops_ratio=_matched_flops(rows, method, seed, value, cfg)
                    )
                    setting = Setting(batch_size=cfg.bench_batch, seq_len=cfg.bench_seq)
                try:
                    pruned, masks, rep = prune_model(
                        dense, tokenizer, data, replace(pcfg, finetune_epochs=0), calib, scores, dense_metrics
                    )
                except PgbertError as e:  # a speed this method cannot reach: said in the table, not fatal
                    if kind != "speedup":
                        raise
                    rows.append(
                        {"method": name, "budget": kind, "target": value, "seed": seed, "unreachable": str(e)}
                    )
                    log(f"{name:22s} {budget_label(rows[-1])} seed={seed}: {e}")
                    continue
                speed = measure_compact(pruned, masks, dense, setting, 3) if method.structured else None
                m = rep["metrics"]
                tuned = refinetunes(
                    pruned, masks, dense, tokenizer, data, pcfg, cfg.finetune_seeds, m["pruned"]
                )
                row = {
                    "method": name,
                    "budget": kind,
                    "target": value,
                    "sparsity": value if kind == "sparsity" else None,
                    "seed": seed,
                    "sparsity_achieved": rep["sparsity_achieved"],
                    "params_kept": rep["params_kept"],
                    "flops_ratio": rep["flops_ratio_at_dev_seq_len"] if method.structured else 1.0,
                    "flops_ratio_128": rep["flops_ratio"] if method.structured else 1.0,
                    "flops_seq_len": rep["dev_seq_len"],
                    "flops_ratio_target": pcfg.flops_ratio,
                    "masked": m["masked"][main],
                    "oneshot": m["pruned"][main],
                    "finetuned": mean_finetuned(tuned, main) if tuned else m["pruned"][main],
                    "finetuned_runs": [t["finetuned"][main] for t in tuned],
                    "finetune_best_steps": [t["finetune_best_step"] for t in tuned],  # 0: one shot kept
                    "dense": dense_metrics[main],
                    "speedup": speed["speedup"] if speed else 1.0,
                    "speedup_spread": speed["spread"] if speed else None,
                    "bench_setting": vars(setting),
                    "prune_seconds": sum(
                        rep["timings_s"][k] for k in ("importance", "grouping_allocation", "compensation")
                    ),
                    "metric": main,
                    "compensation_stopped_at": rep["compensation"].get("stopped_at"),
                    "dropped_sublayers": rep["dropped_sublayers"],
                    "layout": rep["layout"],
                    "grouped_matrices": sum(m.get("option") == "grouped" for m in rep["matrices"]),
                    "latency": rep.get("latency"),
                    # every dev check of the first re-finetune ({"step", metrics}); its score is the best one's, or
                    # the one-shot score when no check beat it (keep_start)
                    "finetune_history": tuned[0]["finetune_history"] if tuned else [],
                }
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                log(
                    f"{name:22s} {budget_label(row)} seed={seed}: one-shot {row['oneshot']:.4f}  re-finetuned "
                    f"{row['finetuned']:.4f}  flops {row['flops_ratio']:.3f}  speedup {row['speedup']:.2f}x  "
                    f"prune {row['prune_seconds']:.0f}s"
                )
    return rows


def refinetunes(
    pruned, masks, dense, tokenizer, data: TaskData, cfg: PruneConfig, n: int, start: dict | None = None
) -> list[dict]:
    """Stage 6 n times on copies of one pruned model (dev metrics start), with re-finetune seeds
    cfg.seed + 1000 * j (j = 0 is exactly what `pgbert prune --seed` runs); none when cfg.finetune_epochs
    is 0."""
    if cfg.finetune_epochs <= 0:
        return []
    return [
        refinetune(
            copy.deepcopy(pruned),
            masks,
            dense,
            tokenizer,
            data,
            replace(cfg, seed=cfg.seed + 1000 * j),
            start,
        )[1]
        for j in range(n)
    ]


def mean_finetuned(tuned: list[dict], metric: str) -> float | None:
    """A mask set's re-finetuned score: the mean of its re-finetunes' metric (None when none ran)."""
    return statistics.mean(t["finetuned"][metric] for t in tuned) if tuned else None


def budget_of(row: dict) -> tuple[str, float]:
    """A row's budget (kind, value); rows written before speedup budgets hold only their sparsity."""
    if "budget" in row:
        return row["budget"], row["target"]
    return "sparsity", row["sparsity"]


def reached(rows: list[dict]) -> list[dict]:
    """The rows whose method reached its budget (a speed out of a method's reach leaves a note instead)."""
    return [r for r in rows if "unreachable" not in r]


def unreachable_notes(rows: list[dict]) -> str:
    notes = sorted({(r["method"], budget_label(r), r["unreachable"]) for r in rows if "unreachable" in r})
    return "".join(f"\n{m} at {b}: not reached ({msg})\n" for m, b, msg in notes)


def budget_label(row: dict) -> str:
    kind, value = budget_of(row)
    return f"speedup {value:g}x" if kind == "speedup" else f"s={value:.2f}"


def _matched_flops(rows: list[dict], method, seed: int, s: float, cfg: CompareConfig) -> float | None:
    """For a MAC-budget method: the FLOPs ratio (at the task's average dev length) PGB reached at this seed
    and sparsity, so the two meet at equal FLOPs; without a PGB row, None (MACs <= 1 - s)."""
    if method.budget != "macs" or not cfg.match_flops:
        return None
    pgb = [r for r in rows if (r["method"], r["seed"], r["sparsity"]) == ("pgb", seed, s)]
    return pgb[0]["flops_ratio"] if pgb else None


def summarise(rows: list[dict]) -> list[dict]:
    rows = reached(rows)
    out = []
    keys = sorted({(budget_of(r), r["method"]) for r in rows}, key=lambda k: (k[0], METHODS.index(k[1])))
    for budget, m in keys:
        rs = [r for r in rows if budget_of(r) == budget and r["method"] == m]
        agg = {"method": m, "budget": budget[0], "target": budget[1], "seeds": len(rs)}
        keys = ("masked", "oneshot", "finetuned", "flops_ratio", "speedup", "prune_seconds", "params_kept")
        for k in (*keys, "sparsity_achieved"):
            vals = [r[k] for r in rs]
            agg[k] = statistics.mean(vals)
            agg[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


STRUCTURED_BASELINES = ("kwon", "structured-fisher")
TIE = 1e-9  # a per-seed difference this small is a tie (means of several re-finetunes carry float error)
LATENCY_METHODS = ("pgb", *STRUCTURED_BASELINES)  # compare --speedup's default


def paired(rows: list[dict], ref: str = "pgb", against: tuple[str, ...] = STRUCTURED_BASELINES) -> list[dict]:
    """ref minus each baseline, paired by seed (same calibration data, dev set and re-finetune budget):
    mean and std of the per-seed differences, their signs, and a paired t-test p-value (3+ seeds)."""
    from scipy import stats

    rows = reached(rows)
    out = []
    for budget in sorted({budget_of(r) for r in rows}):
        by = {(r["method"], r["seed"]): r for r in rows if budget_of(r) == budget}
        for base in against:
            seeds = sorted(seed for m, seed in by if m == ref and (base, seed) in by)
            if not seeds:
                continue
            agg = {
                "method": ref,
                "baseline": base,
                "budget": budget[0],
                "target": budget[1],
                "seeds": len(seeds),
            }
            for k in ("oneshot", "finetuned"):
                d = [by[ref, i][k] - by[base, i][k] for i in seeds]
                agg[k] = statistics.mean(d)
                agg[k + "_std"] = statistics.stdev(d) if len(d) > 1 else 0.0
                agg[k + "_wins"] = sum(x > TIE for x in d)
                agg[k + "_losses"] = sum(x < -TIE for x in d)
                p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 2 else float("nan")  # paired t-test
                agg[k + "_p"] = p if p == p else None
            out.append(agg)
    return out


def record(pair: dict, half: str) -> str:
    """A paired row's wins-ties-losses for "oneshot" or "finetuned", with its t-test p where there is one."""
    ties = pair["seeds"] - pair[half + "_wins"] - pair[half + "_losses"]
    p = f", p {pair[half + '_p']:.2f}" if pair[half + "_p"] is not None else ""
    return f"{pair[half + '_wins']}-{ties}-{pair[half + '_losses']}{p}"


def markdown(
    summary: list[dict],
    dense: float,
    metric: str,
    pairs: list[dict] | None = None,
    refinetuned: bool = True,
    finetune_seeds: int = 1,
) -> str:
    """The summary and paired tables; refinetuned=False (a compare with --finetune-epochs 0) writes "not run"
    in the re-finetuned columns instead of repeating the one-shot numbers."""
    lines = [f"Dense {metric}: {dense:.4f}", ""]
    if refinetuned and finetune_seeds > 1:
        lines += [
            f"Re-finetuned: the mean of {finetune_seeds} re-finetunes (seeds) of each pruned model.",
            "",
        ]
    lines += [
        f"| method | budget | one-shot {metric} | re-finetuned {metric} | sparsity achieved | kept params | FLOPs ratio | measured speedup | prune time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        tuned = _cell(f"{r['finetuned']:.4f} ± {r['finetuned_std']:.4f}", refinetuned)
        lines.append(
            f"| {r['method']} | {budget_label(r)} | {r['oneshot']:.4f} ± {r['oneshot_std']:.4f} | {tuned} | "
            f"{r['sparsity_achieved']:.3f} | {int(r['params_kept']):,} | "
            f"{r['flops_ratio']:.3f} | {r['speedup']:.2f}x ± {r['speedup_std']:.2f} | {r['prune_seconds']:.0f} |"
        )
    if pairs:
        lines += [
            "",
            f"PGB minus each structured baseline, paired by seed (mean ± std of the per-seed {metric} "
            "differences; wins-ties-losses; paired t-test p):",
            "",
            "| vs | budget | one-shot | re-finetuned |",
            "|---|---|---|---|",
        ]
        for r in pairs:
            cells = []
            for k in ("oneshot", "finetuned"):
                cells.append(f"{r[k]:+.4f} ± {r[k + '_std']:.4f} ({record(r, k)})")
            lines.append(
                f"| {r['baseline']} | {budget_label(r)} | {cells[0]} | {_cell(cells[1], refinetuned)} |"
            )
    return "\n".join(lines) + "\n"


def _cell(text: str, run: bool) -> str:
    return text if run else "not run"


def plot(summary: list[dict], path, metric: str) -> None:
    """Accuracy against measured speedup (the compact model over the dense one), one line per method, with
    error bars (std over seeds) on both; one panel one-shot, one re-finetuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in (
        (axes[0], "oneshot", "one-shot (no re-finetuning)"),
        (axes[1], "finetuned", "re-finetuned"),
    ):
        for m in METHODS:
            rs = sorted([r for r in summary if r["method"] == m], key=lambda r: r["speedup"])
            if rs:
                ax.errorbar(
                    [r["speedup"] for r in rs],
                    [r[key] for r in rs],
                    xerr=[r["speedup_std"] for r in rs],
                    yerr=[r[key + "_std"] for r in rs],
                    marker="o",
                    capsize=3,
                    label=m,
                )
        ax.set_xlabel("measured speedup over dense (compact model)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"dev {metric}")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

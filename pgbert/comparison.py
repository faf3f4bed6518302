"""Every method x every budget x seeds on the same model and data: a loop over the method registry.

Each row is a `pgbert prune --method M --sparsity S --seed K` run with compare's flags (same calibration
draw, same re-finetune); Kwon et al. (a MAC budget) get the FLOPs ratio PGB reached at that seed and
sparsity. summarise() gives mean +- std per cell, paired() PGB minus each structured baseline seed by seed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

from torch import nn

from .config import PruneConfig
from .errors import PgbertError
from .methods import METHODS, get_method
from .pipeline import calibrate, measure_compact, prune_model
from .tasks import TaskData
from .training import evaluate


@dataclass
class CompareConfig:
    sparsities: tuple[float, ...] = (0.5, 0.88)
    methods: tuple[str, ...] = METHODS
    seeds: int = 1
    calib_samples: int = 2048  # every method's calibration draw (Kwon et al.'s default, and PGB's)
    compensation_samples: int = 512
    finetune_epochs: float = 0.25
    lr: float = 5e-5
    batch_size: int = 32
    max_seq_length: int = 128
    bench_batch: int = 32
    bench_seq: int = 128
    match_flops: bool = True  # MAC-budget methods (kwon) get the FLOPs ratio PGB reached, same seed and s
    quiet: bool = False

    def validate(self) -> None:
        bad = [s for s in self.sparsities if not 0 < s < 1]
        if bad:
            raise PgbertError(f"every --sparsity must be in (0, 1); got {bad}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PgbertError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if self.seeds < 1:
            raise PgbertError(f"--seeds must be at least 1, got {self.seeds}")

    def prune_config(self, method: str, seed: int, sparsity: float | None = None, flops_ratio=None):
        """The PruneConfig that `pgbert prune --method METHOD` builds from the same flags."""
        return PruneConfig(
            sparsity=sparsity,
            flops_ratio=flops_ratio,
            method=method,
            calib_samples=self.calib_samples,
            compensation_samples=self.compensation_samples,
            finetune_epochs=self.finetune_epochs,
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
            base = cfg.prune_config(name, seed, sparsity=cfg.sparsities[0])
            calib = calibrate(data, tokenizer, dense, base, method.sampling)
            t = time.perf_counter()
            scores = (method.importance(dense, calib, base), time.perf_counter() - t)
            for s in cfg.sparsities:
                pcfg = replace(base, sparsity=s, flops_ratio=_matched_flops(rows, method, seed, s, cfg))
                pruned, masks, rep = prune_model(dense, tokenizer, data, pcfg, calib, scores, dense_metrics)
                speed = (
                    measure_compact(pruned, masks, dense, cfg.bench_batch, cfg.bench_seq, 3)
                    if method.structured
                    else None
                )
                m = rep["metrics"]
                row = {
                    "method": name,
                    "sparsity": s,
                    "seed": seed,
                    "sparsity_achieved": rep["sparsity_achieved"],
                    "params_kept": rep["params_kept"],
                    "flops_ratio": rep["flops_ratio_at_dev_seq_len"] if method.structured else 1.0,
                    "flops_ratio_128": rep["flops_ratio"] if method.structured else 1.0,
                    "flops_seq_len": rep["dev_seq_len"],
                    "flops_ratio_target": pcfg.flops_ratio,
                    "masked": m["masked"][main],
                    "oneshot": m["pruned"][main],
                    "finetuned": m.get("finetuned", m["pruned"])[main],
                    "dense": dense_metrics[main],
                    "speedup": speed["speedup"] if speed else 1.0,
                    "prune_seconds": sum(
                        rep["timings_s"][k] for k in ("importance", "grouping_allocation", "compensation")
                    ),
                    "metric": main,
                    "compensation_stopped_at": rep["compensation"].get("stopped_at"),
                    "dropped_sublayers": rep["dropped_sublayers"],
                    "grouped_matrices": sum(m.get("option") == "grouped" for m in rep["matrices"]),
                }
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                log(
                    f"{name:22s} s={s:.2f} seed={seed}: one-shot {row['oneshot']:.4f}  re-finetuned "
                    f"{row['finetuned']:.4f}  flops {row['flops_ratio']:.3f}  speedup {row['speedup']:.2f}x  "
                    f"prune {row['prune_seconds']:.0f}s"
                )
    return rows


def _matched_flops(rows: list[dict], method, seed: int, s: float, cfg: CompareConfig) -> float | None:
    """For a MAC-budget method: the FLOPs ratio (at the task's average dev length) PGB reached at this seed
    and sparsity, so the two meet at equal FLOPs; without a PGB row, None (MACs <= 1 - s)."""
    if method.budget != "macs" or not cfg.match_flops:
        return None
    pgb = [r for r in rows if (r["method"], r["seed"], r["sparsity"]) == ("pgb", seed, s)]
    return pgb[0]["flops_ratio"] if pgb else None


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["sparsity"], r["method"]) for r in rows}, key=lambda k: (k[0], METHODS.index(k[1])))
    for s, m in keys:
        rs = [r for r in rows if r["sparsity"] == s and r["method"] == m]
        agg = {"method": m, "sparsity": s, "seeds": len(rs)}
        keys = ("masked", "oneshot", "finetuned", "flops_ratio", "speedup", "prune_seconds", "params_kept")
        for k in (*keys, "sparsity_achieved"):
            vals = [r[k] for r in rs]
            agg[k] = statistics.mean(vals)
            agg[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


STRUCTURED_BASELINES = ("kwon", "structured-fisher")


def paired(rows: list[dict], ref: str = "pgb", against: tuple[str, ...] = STRUCTURED_BASELINES) -> list[dict]:
    """ref minus each baseline, paired by seed (same calibration data, dev set and re-finetune budget):
    mean and std of the per-seed differences, their signs, and a paired t-test p-value (3+ seeds)."""
    from scipy import stats

    out = []
    for s in sorted({r["sparsity"] for r in rows}):
        by = {(r["method"], r["seed"]): r for r in rows if r["sparsity"] == s}
        for base in against:
            seeds = sorted(seed for m, seed in by if m == ref and (base, seed) in by)
            if not seeds:
                continue
            agg = {"method": ref, "baseline": base, "sparsity": s, "seeds": len(seeds)}
            for k in ("oneshot", "finetuned"):
                d = [by[ref, i][k] - by[base, i][k] for i in seeds]
                agg[k] = statistics.mean(d)
                agg[k + "_std"] = statistics.stdev(d) if len(d) > 1 else 0.0
                agg[k + "_wins"] = sum(x > 0 for x in d)
                agg[k + "_losses"] = sum(x < 0 for x in d)
                p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 2 else float("nan")  # paired t-test
                agg[k + "_p"] = p if p == p else None
            out.append(agg)
    return out


def markdown(summary: list[dict], dense: float, metric: str, pairs: list[dict] | None = None) -> str:
    lines = [
        f"Dense {metric}: {dense:.4f}",
        "",
        f"| method | sparsity (target / achieved) | one-shot {metric} | re-finetuned {metric} | kept params | FLOPs ratio | speedup | prune time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['method']} | {r['sparsity']:.2f} / {r['sparsity_achieved']:.3f} | {r['oneshot']:.4f} ± {r['oneshot_std']:.4f} | "
            f"{r['finetuned']:.4f} ± {r['finetuned_std']:.4f} | {int(r['params_kept']):,} | {r['flops_ratio']:.3f} | "
            f"{r['speedup']:.2f}x | {r['prune_seconds']:.0f} |"
        )
    if pairs:
        lines += [
            "",
            f"PGB minus each structured baseline, paired by seed (mean ± std of the per-seed {metric} "
            "differences; wins-ties-losses; paired t-test p):",
            "",
            "| vs | sparsity | one-shot | re-finetuned |",
            "|---|---|---|---|",
        ]
        for r in pairs:
            cells = []
            for k in ("oneshot", "finetuned"):
                ties = r["seeds"] - r[k + "_wins"] - r[k + "_losses"]
                p = f", p {r[k + '_p']:.2f}" if r[k + "_p"] is not None else ""
                cells.append(
                    f"{r[k]:+.4f} ± {r[k + '_std']:.4f} ({r[k + '_wins']}-{ties}-{r[k + '_losses']}{p})"
                )
            lines.append(f"| {r['baseline']} | {r['sparsity']:.2f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in (
        (axes[0], "oneshot", "one-shot (no re-finetuning)"),
        (axes[1], "finetuned", "re-finetuned"),
    ):
        for m in METHODS:
            rs = sorted([r for r in summary if r["method"] == m], key=lambda r: r["flops_ratio"])
            if rs:
                ax.errorbar(
                    [r["flops_ratio"] for r in rs],
                    [r[key] for r in rs],
                    yerr=[r[key + "_std"] for r in rs],
                    marker="o",
                    capsize=3,
                    label=m,
                )
        ax.set_xlabel("FLOPs ratio (kept / dense, seq 128)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"dev {metric}")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Every method x every budget x seeds on the same model, calibration data and re-finetune budget.

Methods: pgb, pgb-identity (no permutation), kwon (Kwon et al. 2022), structured-fisher (heads and FFN
neurons), unstructured-magnitude and unstructured-fisher (accuracy references with no speedup).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from .baselines import kwon
from .baselines.structured import structured_fisher_keep, unit_masks_to_weight_masks
from .bench import compare as bench_compare
from .errors import PgbertError
from .method.compensation import compensate
from .method.structure import flops_ratio
from .pipeline import (
    PruneConfig,
    batches_of,
    calibrated_scores,
    calibration_split,
    fisher_and_units,
    masks_from_scores,
    prunable_names,
    task_loss,
)
from .tasks import TaskData
from .training import TrainConfig, apply_masks, evaluate, finetune

METHODS = (
    "pgb",
    "pgb-identity",
    "kwon",
    "structured-fisher",
    "unstructured-magnitude",
    "unstructured-fisher",
)


@dataclass
class CompareConfig:
    sparsities: tuple[float, ...] = (0.5, 0.88)
    methods: tuple[str, ...] = METHODS
    seeds: int = 1
    calib_samples: int = 1024
    compensation_samples: int = 512
    finetune_epochs: float = 0.25
    lr: float = 5e-5
    batch_size: int = 32
    max_seq_length: int = 128
    bench_batch: int = 32
    bench_seq: int = 128
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


def _unstructured(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int(round((1 - sparsity) * flat.numel()))
    thr = torch.topk(flat, k).values[-1]
    return {n: (s >= thr).float() for n, s in scores.items()}


def run(dense: nn.Module, tokenizer, data: TaskData, cfg: CompareConfig, log=print) -> list[dict]:
    """All rows (method x sparsity x seed)."""
    cfg.validate()
    names = prunable_names(dense)
    flat = [n for layer in names for n in layer]
    total = sum(dense.get_parameter(n).numel() for n in flat)
    heads = (
        dense.config.num_attention_heads
        if hasattr(dense.config, "num_attention_heads")
        else dense.config.n_heads
    )
    hidden = getattr(dense.config, "hidden_size", None) or dense.config.dim
    dense_metrics = evaluate(dense, tokenizer, data, max_seq_length=cfg.max_seq_length)
    main = data.spec.main_metric
    rows = []
    for seed in range(cfg.seeds):
        pcfg = PruneConfig(
            sparsity=0.5,
            calib_samples=cfg.calib_samples,
            compensation_samples=cfg.compensation_samples,
            batch_size=cfg.batch_size,
            max_seq_length=cfg.max_seq_length,
            seed=seed,
            quiet=True,
        )
        calib, check = calibration_split(data, pcfg)
        calib_b = batches_of(data, calib, tokenizer, dense, pcfg)
        check_b = batches_of(data, check, tokenizer, dense, pcfg)
        fit_b = calib_b[: max(1, cfg.compensation_samples // cfg.batch_size)]
        t = time.perf_counter()
        torch.manual_seed(seed)
        scores, units = fisher_and_units(dense, calib_b, names)
        calibrated, head_values = calibrated_scores(scores, units, names, heads)  # as in `pgbert prune`
        fisher_s = time.perf_counter() - t
        mag = {n: dense.get_parameter(n).detach().abs() for n in flat}
        for s in cfg.sparsities:
            budget = (1 - s) * total
            for method in cfg.methods:
                t = time.perf_counter()
                pruned = copy.deepcopy(dense)
                if method in ("pgb", "pgb-identity"):
                    _, masks = masks_from_scores(
                        calibrated, names, replace(pcfg, sparsity=s, permute=method == "pgb"), head_values
                    )
                elif method in ("kwon", "structured-fisher"):
                    keep = (kwon.search if method == "kwon" else structured_fisher_keep)(units, dense, budget)
                    if method == "kwon":
                        keep = kwon.rearrange(keep, units)
                    masks = unit_masks_to_weight_masks(dense, names, keep)
                else:
                    masks = _unstructured(scores if method.endswith("fisher") else mag, s)
                apply_masks(pruned, masks)
                if method == "kwon":
                    kwon.rescale(dense, pruned, keep, fit_b)
                elif method in ("pgb", "pgb-identity", "structured-fisher"):
                    compensate(dense, pruned, masks, fit_b, check_b, task_loss)
                prune_s = time.perf_counter() - t + (0.0 if method == "unstructured-magnitude" else fisher_s)
                oneshot = evaluate(pruned, tokenizer, data, max_seq_length=cfg.max_seq_length)
                tcfg = TrainConfig(
                    epochs=cfg.finetune_epochs,
                    lr=cfg.lr,
                    batch_size=cfg.batch_size,
                    seed=seed,
                    max_seq_length=cfg.max_seq_length,
                    quiet=True,
                    eval_steps=None,
                )
                tuned = pruned
                if cfg.finetune_epochs > 0:
                    tuned, _ = finetune(pruned, tokenizer, data, tcfg, masks=masks)
                after = evaluate(tuned, tokenizer, data, max_seq_length=cfg.max_seq_length)
                layers = [
                    {k: masks[n] for k, n in zip(("q", "k", "v", "o", "ffn_in", "ffn_out"), layer)}
                    for layer in names
                ]
                structured = not method.startswith("unstructured")
                speed = _speed(tuned, masks, dense, cfg) if structured else {"speedup": 1.0}
                row = {
                    "method": method,
                    "sparsity": s,
                    "seed": seed,
                    "sparsity_achieved": 1 - sum(float(m.sum()) for m in masks.values()) / total,
                    "params_kept": int(sum(float(m.sum()) for m in masks.values())),
                    "flops_ratio": flops_ratio(layers, heads, hidden, cfg.bench_seq)["flops_ratio"]
                    if structured
                    else 1.0,
                    "oneshot": oneshot[main],
                    "finetuned": after[main],
                    "dense": dense_metrics[main],
                    "speedup": speed["speedup"],
                    "prune_seconds": prune_s,
                    "metric": main,
                }
                rows.append(row)
                log(
                    f"{method:22s} s={s:.2f} seed={seed}: one-shot {row['oneshot']:.4f}  re-finetuned "
                    f"{row['finetuned']:.4f}  flops {row['flops_ratio']:.3f}  speedup {row['speedup']:.2f}x  "
                    f"prune {prune_s:.0f}s"
                )
    return rows


def _speed(model: nn.Module, masks: dict, dense: nn.Module, cfg: CompareConfig) -> dict:
    from .compact.model import to_compact

    compact = to_compact(model, masks)
    return bench_compare(compact, dense, cfg.bench_batch, cfg.bench_seq, repeats=3)


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted(
        {(r["sparsity"], r["method"]) for r in rows}, key=lambda k: (k[0], list(METHODS).index(k[1]))
    )
    for s, m in keys:
        rs = [r for r in rows if r["sparsity"] == s and r["method"] == m]
        agg = {"method": m, "sparsity": s, "seeds": len(rs)}
        for k in ("oneshot", "finetuned", "flops_ratio", "speedup", "prune_seconds", "params_kept"):
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
                p = float(stats.ttest_1samp(d, 0.0).pvalue)  # the paired t-test on the differences
                agg[k + "_p"] = p if len(d) > 2 and p == p else None
            out.append(agg)
    return out


def markdown(summary: list[dict], dense: float, metric: str, pairs: list[dict] | None = None) -> str:
    lines = [
        f"Dense {metric}: {dense:.4f}",
        "",
        f"| method | sparsity | one-shot {metric} | re-finetuned {metric} | kept params | FLOPs ratio | speedup | prune time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['method']} | {r['sparsity']:.2f} | {r['oneshot']:.4f} ± {r['oneshot_std']:.4f} | "
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

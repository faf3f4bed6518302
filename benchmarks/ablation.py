"""Ablations of PGB's design choices on a fine-tuned model (default: the bundled MiniLM run folder).

Variants at each sparsity, one shot (no re-finetuning, so the method itself is measured), same Fisher
scores and calibration data:
  full            PGB as shipped (permutation, allocation with sub-matrix options, compensation, drops)
  no-permutation  identity grouping (contiguous blocks)
  uniform         every matrix keeps all G blocks of a G-grouping, G = round(1 / (1-s)): the same density
                  everywhere (no allocation, no sub-matrices, no drops)
  no-compensation masks only
  no-layer-drop   every matrix keeps at least one block
  grouped-only    no sub-matrix options (only G-groupings with k >= 2 blocks, dense, empty)
  raw-fisher      summed single-weight saliency W^2 F (no unit calibration)
  dim-attention   attention pruned by Q/K and V/O pair blocks (dims inside heads) instead of whole heads
  ffn-eighths     FFN pairs keep neurons in steps of 1/8 (PGB's default: 1/16)

    python benchmarks/ablation.py runs/minilm-rt --sparsity 0.5 0.88 [--seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace

import torch

from pgbert import models
from pgbert.adapters import MATRICES
from pgbert.pipeline import (
    PruneConfig,
    batches_of,
    calibrated_scores,
    calibration_split,
    fisher_and_units,
    masks_from_scores,
    prunable_names,
    task_loss,
)
from pgbert.stages.allocation import FRACTIONS
from pgbert.stages.compensation import compensate
from pgbert.stages.importance import head_importance
from pgbert.stages.structure import flops_ratio
from pgbert.tasks import load_task
from pgbert.training import apply_masks, evaluate

VARIANTS = {
    "full": {},
    "no-permutation": {"permute": False},
    "uniform": {},  # fixed_groups set per sparsity in run_seed
    "no-compensation": {"compensate": False},
    "no-layer-drop": {"allow_drop": False},
    "grouped-only": {"extra": {"no_submatrix": True}},
    "raw-fisher": {"unit_fisher": False},
    "dim-attention": {"attention": "blocks"},
    "ffn-eighths": {"extra": {"pair_fractions": FRACTIONS}},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default="runs/minilm-rt")
    p.add_argument("--task", default="rt-sentiment")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.88])
    p.add_argument("--calib-samples", type=int, default=2048)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--seeds", type=int, default=1, help="calibration subsets (seed 0, 1, ...)")
    p.add_argument("--json")
    a = p.parse_args()
    data = load_task(a.task)
    tok = models.load_tokenizer(a.model)
    dense = models.load_for_task(a.model, data, require_finetuned=True).eval()
    dense_acc = evaluate(dense, tok, data)["accuracy"]
    print(f"dense accuracy {dense_acc:.4f}")
    rows = [r for seed in range(a.seeds) for r in run_seed(dense, tok, data, a, seed)]
    print("mean over seeds (masked / compensated):")
    for s in a.sparsity:
        for v in a.variants:
            rs = [r for r in rows if r["sparsity"] == s and r["variant"] == v]
            masked, comp = (statistics.mean(r[k] for r in rs) for k in ("masked", "oneshot"))
            print(f"s={s:.2f} {v:16s} {masked:.4f} / {comp:.4f}  ({len(rs)} seeds)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"dense": dense_acc, "rows": rows}, f, indent=2)


def run_seed(dense, tok, data, a, seed: int) -> list[dict]:
    base = PruneConfig(sparsity=0.5, calib_samples=a.calib_samples, quiet=True, seed=seed)
    calib, check = calibration_split(data, base)
    calib_b = batches_of(data, calib, tok, dense, base)
    check_b = batches_of(data, check, tok, dense, base)
    names = prunable_names(dense)
    t = time.perf_counter()
    torch.manual_seed(seed)
    raw, units = fisher_and_units(dense, calib_b, names)
    heads, hidden = dense.config.num_attention_heads, dense.config.hidden_size
    calibrated, unit_heads = calibrated_scores(raw, units, names, heads)
    head_values = {True: unit_heads, False: head_importance(raw, names, heads)}  # by cfg.unit_fisher
    print(f"seed {seed}: fisher on {len(calib)} examples: {time.perf_counter() - t:.0f}s")
    rows = []
    for s in a.sparsity:
        for v in a.variants:
            cfg = replace(base, sparsity=s, **VARIANTS[v])
            if v == "uniform":
                cfg = replace(cfg, fixed_groups=round(1 / (1 - s)))
            scores = calibrated if cfg.unit_fisher else raw
            t = time.perf_counter()
            chosen, masks = masks_from_scores(scores, names, cfg, head_values[cfg.unit_fisher])
            pruned = copy.deepcopy(dense)
            apply_masks(pruned, masks)
            masked = evaluate(pruned, tok, data)["accuracy"]
            if cfg.compensate:
                fit_b = calib_b[: cfg.compensation_samples // cfg.batch_size]
                compensate(dense, pruned, masks, fit_b, check_b, task_loss)
            acc = evaluate(pruned, tok, data)["accuracy"]
            layers = [dict(zip(MATRICES, (masks[n] for n in layer))) for layer in names]
            kept = sum(float((scores[n] * masks[n]).sum()) for n in chosen) / sum(
                float(scores[n].sum()) for n in chosen
            )
            row = {
                "seed": seed,
                "sparsity": s,
                "variant": v,
                "masked": masked,
                "oneshot": acc,
                "score_kept": kept,
                "flops_ratio": flops_ratio(layers, heads, hidden)["flops_ratio"],
                "seconds": time.perf_counter() - t,
            }
            rows.append(row)
            print(
                f"seed {seed} s={s:.2f} {v:16s} masked {masked:.4f}  compensated {acc:.4f}  "
                f"score kept {kept:.3f}  flops {row['flops_ratio']:.3f}  {row['seconds']:.0f}s",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()

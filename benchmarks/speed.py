"""Speed of compact PGB models: BERT-base geometry (random weights, magnitude importance), fp32.

For each sparsity: dense vs compact vs an equal-FLOPs dense model (the ceiling: same depth, head count
and FFN width chosen to give the same linear FLOPs), at batch 1 and 32, seq 128. Every ratio is measured
in one run, interleaved, so machine noise hits all models alike. Also times grouping + allocation.

    python benchmarks/speed.py [--threads 2] [--sparsity 0.5 0.75 0.88] [--batch 1 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

from pgbert.adapters import prunable_names
from pgbert.bench import encoder_macs, latency
from pgbert.compact.model import to_compact
from pgbert.stages.allocation import OptionSpace, choose_masks
from pgbert.stages.importance import head_importance, magnitude_scores
from pgbert.training import apply_masks

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def ceiling_model(kept_linear: int, layers: int = 12, d: int = 768) -> BertForSequenceClassification:
    """Dense BERT with the same depth whose linear weight count matches `kept_linear`."""
    per_layer = kept_linear / layers
    density = per_layer / (12 * d * d)
    heads = max(1, round(12 * density))
    ffn = max(16, int(round((per_layer - 4 * d * 64 * heads) / (2 * d) / 16)) * 16)
    cfg = BertConfig(**{**BASE, "num_attention_heads": heads, "intermediate_size": ffn})
    cfg.hidden_size = d
    model = BertForSequenceClassification(cfg)
    # heads * 64 != d: rebuild Q/K/V/O at the narrower width
    for layer in model.bert.encoder.layer:
        sa = layer.attention.self
        sa.num_attention_heads, sa.attention_head_size, sa.all_head_size = heads, 64, heads * 64
        sa.scaling = 64**-0.5
        sa.query = torch.nn.Linear(d, heads * 64)
        sa.key = torch.nn.Linear(d, heads * 64)
        sa.value = torch.nn.Linear(d, heads * 64)
        layer.attention.output.dense = torch.nn.Linear(heads * 64, d)
    return model.eval()


def timed(models: dict, batch: int, seq: int, rounds: int = 3, repeats: int = 3) -> dict:
    res = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            res[k].append(latency(m, batch, seq, repeats=repeats, warmup=1)["median_ms"])
    return {k: statistics.median(v) for k, v in res.items()}


def base_geometry(seed: int = 0):
    """A random BERT-base classifier, its prunable names, magnitude scores and head values."""
    torch.manual_seed(seed)
    dense = BertForSequenceClassification(BertConfig(**BASE)).eval()
    names = prunable_names(dense)
    scores = magnitude_scores(dense, [n for layer in names for n in layer])
    return dense, names, scores, head_importance(scores, names, BASE["num_attention_heads"])


def prune_base(dense, names, scores, head_values, s: float | None = None, masks=None):
    """PGB's selection at sparsity s on magnitude scores (or the given masks): (masked, compact, options,
    masks, seconds)."""
    t = time.perf_counter()
    chosen = None
    if masks is None:
        chosen, masks, _ = choose_masks(scores, names, OptionSpace(head_values=head_values), s)
    alloc_s = time.perf_counter() - t
    pruned = BertForSequenceClassification(BertConfig(**BASE)).eval()
    pruned.load_state_dict(dense.state_dict())
    apply_masks(pruned, masks)
    return pruned, to_compact(pruned, masks), chosen, masks, alloc_s


def base_geometry_models(s: float):
    """(dense, compact) BERT-base geometry models at sparsity s."""
    dense, names, scores, head_values = base_geometry()
    return dense, prune_base(dense, names, scores, head_values, s)[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.88])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dense, names, scores, head_values = base_geometry()
    rows = []
    for s in a.sparsity:
        pruned, compact, chosen, masks, alloc_s = prune_base(dense, names, scores, head_values, s)
        kept = sum(int(m.sum()) for m in masks.values())
        ceil = ceiling_model(kept)
        with torch.no_grad():
            ids = torch.randint(5, 1000, (2, 32))
            diff = float((pruned(input_ids=ids).logits - compact(input_ids=ids).logits).abs().max())
        models = {"dense": dense.to(a.device), "compact": compact.to(a.device), "ceiling": ceil.to(a.device)}
        for b in a.batch:
            ms = timed(models, b, a.seq)
            row = {
                "sparsity": s,
                "batch": b,
                "seq": a.seq,
                "threads": a.threads,
                "device": a.device,
                "grouping_allocation_s": alloc_s,
                "max_abs_logit_diff": diff,
                "dense_ms": ms["dense"],
                "compact_ms": ms["compact"],
                "ceiling_ms": ms["ceiling"],
                "speedup": ms["dense"] / ms["compact"],
                "ceiling_speedup": ms["dense"] / ms["ceiling"],
                "fraction_of_ceiling": ms["ceiling"] / ms["compact"],
                "flops_limit": encoder_macs(dense, a.seq) / encoder_macs(compact, a.seq),
                "options": _option_mix(chosen),
            }
            rows.append(row)
            print(
                f"s={s:.2f} batch={b:2d}: speedup {row['speedup']:.2f}x  ceiling {row['ceiling_speedup']:.2f}x  "
                f"({100 * row['fraction_of_ceiling']:.0f}% of ceiling)  FLOP limit {row['flops_limit']:.2f}x  "
                f"alloc {alloc_s:.1f}s  diff {diff:.1e}",
                flush=True,
            )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


def _option_mix(chosen: dict) -> dict:
    mix: dict[str, int] = {}
    for o in chosen.values():
        key = o.kind if o.kind != "grouped" else f"G{o.groups}k{o.blocks_kept}"
        mix[key] = mix.get(key, 0) + 1
    return mix


if __name__ == "__main__":
    main()

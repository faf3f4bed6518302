"""report.json of a pruning run: budget met, structure kept, FLOPs, and what the method chose."""

from __future__ import annotations

from torch import nn

from .adapters import MATRICES, adapter_for
from .stages.structure import flops_ratio, layer_structure, layout


def build_report(
    dense: nn.Module, pruned: nn.Module, names: list[list[str]], sel, cfg, dev_seq_len: float
) -> dict:
    a = adapter_for(dense.config)
    heads, hidden = a.num_heads(dense.config), a.hidden_size(dense.config)
    masks = sel.masks
    flat = [n for layer in names for n in layer]
    total = sum(masks[n].numel() for n in flat)
    mask_kept = sum(int(masks[n].sum()) for n in flat)
    layers = [{k: masks[n] for k, n in zip(MATRICES, layer)} for layer in names]
    structs = [layer_structure(m, heads) for m in layers]
    dropped = [
        f"layer{i}.{part}"
        for i, st in enumerate(structs)
        for part, flag in (("attention", st["attention_dropped"]), ("ffn", st["ffn_dropped"]))
        if flag
    ]
    fr = flops_ratio(layers, heads, hidden, cfg.flops_seq_len)
    matrices = sel.report.get("matrices") or [
        {"name": n, "shape": list(masks[n].shape), "density": float(masks[n].mean())} for n in flat
    ]
    out = {
        "method": cfg.method,
        "config": cfg.to_dict(),
        "sparsity_target": cfg.sparsity,
        "flops_ratio_target": cfg.flops_ratio,
        "sparsity_achieved": 1 - mask_kept / total,
        "params_total": total,
        "params_kept": mask_kept,
        "nonzero_kept": sum(int((pruned.get_parameter(n) != 0).sum()) for n in flat),
        "flops_ratio": fr["flops_ratio"],
        "flops_seq_len": fr["seq_len"],
        "dev_seq_len": dev_seq_len,
        "flops_ratio_at_dev_seq_len": flops_ratio(layers, heads, hidden, dev_seq_len)["flops_ratio"],
        "matrices": matrices,
        "layers": structs,
        "layout": [layout(st, a.head_size(dense.config)) for st in structs],
        "dropped_sublayers": dropped,
        **{k: v for k, v in sel.report.items() if k != "matrices"},
    }
    if "score_kept_fraction" in matrices[0]:
        perm = [m["score_kept_fraction"] for m in matrices]
        ident = [m["score_kept_fraction_identity"] for m in matrices]
        out["permutation_gain"] = {
            "mean_score_kept_fraction": sum(perm) / len(perm),
            "mean_score_kept_fraction_identity": sum(ident) / len(ident),
        }
    return out

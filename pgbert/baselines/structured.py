"""Structured baselines on the same adapters: heads and FFN neurons, scored by Fisher information.

Mask variables m (one per head, one per FFN neuron) scale a head's context / a neuron's activation; their
Fisher comes from the same backward pass as PGB's weight Fisher (method.importance.unit_gradients).
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import adapter_for


def unit_costs(model: nn.Module) -> tuple[int, int]:
    """Linear weights carried by one head (Q, K, V rows + O columns) and by one FFN neuron."""
    cfg = model.config
    d = getattr(cfg, "hidden_size", None) or cfg.dim
    heads = adapter_for(cfg).num_heads(cfg)
    return 4 * d * (d // heads), 2 * d


def unit_masks_to_weight_masks(
    model: nn.Module, names: list[list[str]], keep: list[dict]
) -> dict[str, torch.Tensor]:
    """Head / neuron keep-vectors -> 0/1 masks on Q, K, V rows, O columns, FFN-in rows, FFN-out columns."""
    masks = {}
    for layer, k in zip(names, keep):
        q, kk, v, o, f1, f2 = layer
        hd = model.get_parameter(q).shape[0] // k["head"].numel()
        h = k["head"].float().repeat_interleave(hd)
        n = k["neuron"].float()
        for name in (q, kk, v):
            masks[name] = h[:, None].expand_as(model.get_parameter(name)).clone()
        masks[o] = h[None, :].expand_as(model.get_parameter(o)).clone()
        masks[f1] = n[:, None].expand_as(model.get_parameter(f1)).clone()
        masks[f2] = n[None, :].expand_as(model.get_parameter(f2)).clone()
    return masks


def structured_fisher_keep(fisher: list[dict], model: nn.Module, budget: float) -> list[dict]:
    """Keep the heads and neurons with the highest Fisher importance per weight until the budget is spent."""
    hc, nc = unit_costs(model)
    items = []
    for li, f in enumerate(fisher):
        items += [(float(s) / hc, hc, li, "head", i) for i, s in enumerate(f["head"])]
        items += [(float(s) / nc, nc, li, "neuron", i) for i, s in enumerate(f["neuron"])]
    items.sort(key=lambda t: -t[0])
    keep = [
        {
            "head": torch.zeros_like(f["head"], dtype=torch.bool),
            "neuron": torch.zeros_like(f["neuron"], dtype=torch.bool),
        }
        for f in fisher
    ]
    spent = 0.0
    for _, cost, li, kind, i in items:
        if spent + cost <= budget:
            keep[li][kind][i] = True
            spent += cost
    return keep

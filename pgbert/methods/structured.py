"""Structured pruning of whole heads and FFN neurons by their mask Fisher, with PGB's compensation.

Mask variables m (one per head, one per FFN neuron) scale a head's context / a neuron's activation; their
Fisher comes from the same backward pass as PGB's weight Fisher (stages.importance.unit_gradients). Units
are kept by Fisher per weight until the weight budget is spent; the survivors get the same least-squares
compensation as PGB, so the comparison isolates what PGB's finer blocks buy.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import adapter_for, prunable_names
from ..stages.compensation import compensate, task_loss
from ..stages.importance import fisher_and_units
from .base import Calibration, Method, Selection


def unit_costs(model: nn.Module) -> tuple[int, int]:
    """Linear weights carried by one head (Q, K, V rows + O columns) and by one FFN neuron."""
    a = adapter_for(model.config)
    d = a.hidden_size(model.config)
    return 4 * d * a.head_size(model.config), 2 * d


def unit_masks_to_weight_masks(
    model: nn.Module, names: list[list[str]], keep: list[dict]
) -> dict[str, torch.Tensor]:
    """Head / neuron keep-vectors -> 0/1 masks on Q, K, V rows, O columns, FFN-in rows, FFN-out columns."""
    masks = {}
    for layer, k in zip(names, keep):
        q, kk, v, o, f1, f2 = layer
        hd = model.get_parameter(q).shape[0] // k["head"].numel()
        h = (k["head"] != 0).float().repeat_interleave(hd)
        n = (k["neuron"] != 0).float()
        for name in (q, kk, v):
            masks[name] = h[:, None].expand_as(model.get_parameter(name)).clone()
        masks[o] = h[None, :].expand_as(model.get_parameter(o)).clone()
        masks[f1] = n[:, None].expand_as(model.get_parameter(f1)).clone()
        masks[f2] = n[None, :].expand_as(model.get_parameter(f2)).clone()
    return masks


def structured_fisher_keep(fisher: list[dict], head_cost: int, neuron_cost: int, budget: float) -> list[dict]:
    """Keep the heads and neurons with the highest Fisher importance per weight until the budget is spent."""
    items = []
    for li, f in enumerate(fisher):
        items += [(float(s) / head_cost, head_cost, li, "head", i) for i, s in enumerate(f["head"])]
        items += [(float(s) / neuron_cost, neuron_cost, li, "neuron", i) for i, s in enumerate(f["neuron"])]
    items.sort(key=lambda t: -t[0])
    keep = [{k: torch.zeros_like(f[k], dtype=torch.bool) for k in ("head", "neuron")} for f in fisher]
    spent = 0.0
    for _, cost, li, kind, i in items:
        if spent + cost <= budget:
            keep[li][kind][i] = True
            spent += cost
    return keep


class StructuredFisher(Method):
    name = "structured-fisher"

    def importance(self, dense: nn.Module, calib: Calibration, cfg):
        heads = adapter_for(dense.config).num_heads(dense.config)
        return fisher_and_units(dense, calib.batches, prunable_names(dense), heads, cfg.quiet)[1]

    def select(self, dense: nn.Module, units, calib: Calibration, cfg) -> Selection:
        names = prunable_names(dense)
        total = sum(dense.get_parameter(n).numel() for layer in names for n in layer)
        keep = structured_fisher_keep(units, *unit_costs(dense), (1 - cfg.sparsity) * total)
        return Selection(unit_masks_to_weight_masks(dense, names, keep), {"keep": keep})

    def update(self, dense, pruned, sel: Selection, units, calib: Calibration, cfg) -> dict:
        if not cfg.compensate:
            return {}
        return compensate(dense, pruned, sel.masks, calib.fit, calib.check, task_loss, quiet=cfg.quiet)

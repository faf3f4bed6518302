"""Structured pruning of whole heads and FFN neurons by their mask Fisher, with PGB's compensation.

Mask variables m (one per head, one per FFN neuron) scale a head's context / a neuron's activation; their
Fisher comes from the same backward pass as PGB's weight Fisher (stages.importance.unit_gradients). Units
are kept by Fisher per weight until the weight budget is spent; the survivors get the same least-squares
compensation as PGB, so the comparison isolates what PGB's finer blocks buy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..adapters import adapter_for, prunable_names
from ..stages.importance import fisher_and_units
from .base import Calibration, Method, Selection, least_squares_update
from .latency import LatencyBudget, units_ms


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


def structured_fisher_keep(
    fisher: list[dict],
    head_cost: int,
    neuron_cost: int,
    budget: float = math.inf,
    table=None,
    ms_budget: float = math.inf,
) -> list[dict]:
    """Keep the heads and neurons with the highest Fisher importance per unit of cost until the budget is
    spent. Cost: weights; with a measured cost table (profile.CostTable), time: units are ranked by Fisher
    per ms (a head's share of the dense attention time, a neuron's of the dense FFN time) and each is kept
    while both its weights and its marginal time in its layer (the table's time with one more unit, less
    without it) fit."""
    if table is not None:
        g = table.geometry
        head_cost_rank = table.attention_ms[g.heads] / g.heads
        neuron_cost_rank = table.ffn_ms(g.ffn, g.hidden, g.hidden) / g.ffn
    else:
        head_cost_rank, neuron_cost_rank = head_cost, neuron_cost
    items = []
    for li, f in enumerate(fisher):
        items += [(float(s) / head_cost_rank, head_cost, li, "head", i) for i, s in enumerate(f["head"])]
        items += [
            (float(s) / neuron_cost_rank, neuron_cost, li, "neuron", i) for i, s in enumerate(f["neuron"])
        ]
    items.sort(key=lambda t: -t[0])
    keep = [{k: torch.zeros_like(f[k], dtype=torch.bool) for k in ("head", "neuron")} for f in fisher]
    counts = [{"head": 0, "neuron": 0} for _ in fisher]
    spent, ms = 0.0, 0.0
    for _, cost, li, kind, i in items:
        extra = 0.0 if table is None else _unit_ms(table, kind, counts[li][kind])
        if spent + cost <= budget and ms + extra <= ms_budget:
            keep[li][kind][i] = True
            counts[li][kind] += 1
            spent, ms = spent + cost, ms + extra
    return keep


def _unit_ms(table, kind: str, n: int) -> float:
    """The table's time of one more head (neuron) in a layer that keeps n."""
    if kind == "head":
        return table.attention_ms[n + 1] - table.attention_ms[n]
    d = table.geometry.hidden
    return table.ffn_ms(n + 1, d, d) - table.ffn_ms(n, d, d)


class StructuredFisher(Method):
    name = "structured-fisher"
    latency = True

    def importance(self, dense: nn.Module, calib: Calibration, cfg):
        heads = adapter_for(dense.config).num_heads(dense.config)
        return fisher_and_units(dense, calib.batches, prunable_names(dense), heads, cfg.quiet)[1]

    def select(self, dense: nn.Module, units, calib: Calibration, cfg) -> Selection:
        names = prunable_names(dense)
        total = sum(dense.get_parameter(n).numel() for layer in names for n in layer)
        weights = math.inf if cfg.sparsity is None else (1 - cfg.sparsity) * total
        costs = unit_costs(dense)
        budget = LatencyBudget.of(dense, cfg)
        if budget is None:
            keep = structured_fisher_keep(units, *costs, weights)
            return Selection(unit_masks_to_weight_masks(dense, names, keep), {"keep": keep})

        def timed(b: LatencyBudget):
            keep = structured_fisher_keep(units, *costs, weights, b.table, b.sublayer_budget())
            return unit_masks_to_weight_masks(dense, names, keep), units_ms(b.table, keep), keep

        keep, steps = budget.choose_measured(dense, timed)
        report = {"latency": budget.report(units_ms(budget.table, keep), steps)}
        return Selection(unit_masks_to_weight_masks(dense, names, keep), {"keep": keep}, report)

    def update(self, dense, pruned, sel: Selection, units, calib: Calibration, cfg) -> dict:
        return least_squares_update(dense, pruned, sel, calib, cfg)

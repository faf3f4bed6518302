"""PGB, as ../shared/METHOD.md defines it: importance -> grouping by permutation -> budget allocation
(group count, kept blocks, dropped sublayers) -> masks in original coordinates -> compensation.
Re-finetuning and the compact export are the pipeline's, shared by every method."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch
from torch import nn

from ..adapters import adapter_for, prunable_names
from ..stages.allocation import LatencyInfeasible, OptionSpace, choose_masks, predicted_ms
from ..stages.compensation import compensate, example_losses, task_loss
from ..stages.importance import (
    fisher,
    fisher_and_units,
    head_importance,
    magnitude_scores,
    unit_calibrate,
)
from ..training import apply_masks
from .base import Calibration, Method, Selection, fit_tokens, least_squares_update
from .latency import LatencyBudget


class PGB(Method):
    name = "pgb"
    latency = True

    def __init__(self, permute: bool = True):
        self.permute = permute
        self.name = "pgb" if permute else "pgb-identity"

    def importance(self, dense: nn.Module, calib: Calibration, cfg):
        """Stage 1: every weight's score (unit-calibrated Fisher; raw W^2 F or magnitude as ablations) and
        every attention head's (its mask Fisher)."""
        names = prunable_names(dense)
        heads = adapter_for(dense.config).num_heads(dense.config)
        flat = [n for layer in names for n in layer]
        if cfg.importance == "magnitude":
            scores = magnitude_scores(dense, flat)
            return scores, head_importance(scores, names, heads)
        if not cfg.unit_fisher:
            scores = fisher(dense, calib.batches, flat, quiet=cfg.quiet)[0]
            return scores, head_importance(scores, names, heads)
        raw, units = fisher_and_units(dense, calib.batches, names, heads, cfg.quiet)
        return unit_calibrate(raw, names, units), head_importance(raw, names, heads, units)

    def select(self, dense: nn.Module, scores, calib: Calibration, cfg) -> Selection:
        """Stages 2-4: grouping, the knapsack under the weight budget, masks (re-permutation). With
        cfg.importance_steps = T > 1, the kept fraction shrinks geometrically to the budget over T steps:
        each step prunes and compensates a copy of the dense model and scores it afresh (stage 1 again,
        on the same calibration data), and the last step's scores choose the masks."""
        steps = []
        budget = LatencyBudget.of(dense, cfg)
        T = cfg.importance_steps
        for t in range(1, T):
            start = time.perf_counter()
            frac = t / T
            sparsity = None if cfg.sparsity is None else 1 - (1 - cfg.sparsity) ** frac
            step_cfg = replace(cfg, sparsity=sparsity, drop_check=False)
            partway = budget.partway(frac) if budget else None
            sel = self._select(dense, scores, calib, step_cfg, partway, final=False)
            partial = copy.deepcopy(dense)
            apply_masks(partial, sel.masks)
            self.update(dense, partial, sel, scores, calib, cfg)
            scores = self.importance(partial, calib, cfg)
            steps.append({"sparsity": sparsity, "seconds": time.perf_counter() - start})
        sel = self._select(dense, scores, calib, cfg, budget)
        sel.report["importance_steps"] = steps
        return sel

    def _select(
        self, dense: nn.Module, scores, calib: Calibration, cfg, budget=None, final: bool = True
    ) -> Selection:
        weight_scores, head_values = scores
        space = OptionSpace(
            whole_heads=cfg.attention == "heads",
            pairing=cfg.pairing,
            submatrix=cfg.submatrix,
            permute=self.permute,
            group_counts=tuple(cfg.group_counts),
            ffn_steps=cfg.ffn_steps,
            fixed_groups=cfg.fixed_groups,
            allow_drop=cfg.allow_drop,
            free_widths=cfg.free_widths,
            ffn_low=cfg.ffn_low,
            head_values=head_values,
        )
        names = prunable_names(dense)
        measure = drop_measure(dense, calib, cfg) if cfg.drop_check and cfg.allow_drop else None

        def choose(b: LatencyBudget | None):
            try:
                return choose_masks(
                    weight_scores,
                    names,
                    space,
                    cfg.sparsity,
                    measure,
                    b.knapsack() if b else None,
                    cfg.drop_check_se,
                    cfg.drop_check_best,
                )
            except LatencyInfeasible as e:
                raise b.unreachable(e) from None

        def timed(b: LatencyBudget):
            chosen, masks, checks = choose(b)
            return masks, predicted_ms(chosen, names, b.table, b.head_dim), (chosen, masks, checks)

        if budget is None:
            chosen, masks, checks = choose(None)
        else:
            (chosen, masks, checks), steps = budget.choose_measured(dense, timed, final)
        report = {"matrices": matrix_report(weight_scores, chosen, masks), "drop_checks": checks}
        if budget:
            predicted = predicted_ms(chosen, names, budget.table, budget.head_dim)
            report["latency"] = budget.report(predicted, steps)
        return Selection(masks, {"chosen": chosen}, report)

    def update(self, dense, pruned, sel: Selection, scores, calib: Calibration, cfg) -> dict:
        """Stage 5: least-squares compensation, guarded by the held-out task loss."""
        return least_squares_update(dense, pruned, sel, calib, cfg)


def drop_measure(dense: nn.Module, calib: Calibration, cfg):
    """The drop check's measure: per-example held-out task losses of the model pruned to `masks` and
    compensated on cfg.drop_check_samples calibration examples, without the guards (compensation recovers
    much of what a kept sublayer loses and little of a dropped one's, so the masked loss alone would favour
    drops)."""
    fit = calib.fit[: cfg.drop_check_batches]

    def measure(masks: dict[str, torch.Tensor]) -> torch.Tensor:
        pruned = copy.deepcopy(dense)
        apply_masks(pruned, masks)
        if cfg.compensate:
            compensate(
                dense,
                pruned,
                masks,
                fit,
                None,
                task_loss,
                damp=cfg.compensation_damp,
                target=cfg.compensation_target,
                tokens=fit_tokens(cfg, calib),
            )
        return example_losses(pruned, calib.check)

    return measure


def matrix_report(
    scores: dict[str, torch.Tensor], chosen: dict, masks: dict[str, torch.Tensor]
) -> list[dict]:
    """Per matrix: the chosen option, its block layout and the score kept with and without permutation."""
    out = []
    for n, o in chosen.items():
        total = float(scores[n].double().sum()) or 1.0
        kept = float((scores[n].double() * masks[n]).sum()) / total
        out.append(
            {
                "name": n,
                "shape": list(scores[n].shape),
                "option": o.kind,
                "groups": o.groups,
                "blocks_kept": o.blocks_kept,
                "block_shape": list(o.shape),
                "density": o.cost / scores[n].numel(),
                "score_kept_fraction": kept,
                # whole heads: no permutation, identity_value == value
                "score_kept_fraction_identity": kept * (o.identity_value / o.value if o.value else 1.0),
            }
        )
    return out

"""PGB, as ../shared/METHOD.md defines it: importance -> grouping by permutation -> budget allocation
(group count, kept blocks, dropped sublayers) -> masks in original coordinates -> compensation.
Re-finetuning and the compact export are the pipeline's, shared by every method."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import adapter_for, prunable_names
from ..stages.allocation import OptionSpace, choose_masks
from ..stages.compensation import compensate, task_loss
from ..stages.importance import (
    fisher,
    fisher_and_units,
    head_importance,
    magnitude_scores,
    unit_calibrate,
)
from .base import Calibration, Method, Selection


class PGB(Method):
    name = "pgb"

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
        """Stages 2-4: grouping, the knapsack under the weight budget, masks (re-permutation)."""
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
            head_values=head_values,
        )
        names = prunable_names(dense)
        chosen, masks = choose_masks(weight_scores, names, space, cfg.sparsity)
        return Selection(masks, {"chosen": chosen}, {"matrices": matrix_report(weight_scores, chosen, masks)})

    def update(self, dense, pruned, sel: Selection, scores, calib: Calibration, cfg) -> dict:
        """Stage 5: least-squares compensation, guarded by the held-out task loss."""
        if not cfg.compensate:
            return {}
        return compensate(dense, pruned, sel.masks, calib.fit, calib.check, task_loss, quiet=cfg.quiet)


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

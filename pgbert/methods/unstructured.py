"""Unstructured one-shot pruning (magnitude or Fisher saliency): the globally best single weights under the
weight budget. An accuracy reference only: its masks give no speedup, so no compact model is built."""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import prunable_names
from ..stages.importance import fisher, magnitude_scores
from .base import Calibration, Method, Selection


def top_weights(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """0/1 masks keeping the round((1 - sparsity) x total) highest scores over all matrices together."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int(round((1 - sparsity) * flat.numel()))
    keep = torch.zeros(flat.numel())
    keep[torch.topk(flat, k, sorted=False).indices] = 1.0
    out, at = {}, 0
    for n, s in scores.items():
        out[n] = keep[at : at + s.numel()].view_as(s).clone()
        at += s.numel()
    return out


class Unstructured(Method):
    structured = False

    def __init__(self, scoring: str):
        self.scoring = scoring  # "magnitude" | "fisher"
        self.name = f"unstructured-{scoring}"

    def importance(self, dense: nn.Module, calib: Calibration, cfg):
        flat = [n for layer in prunable_names(dense) for n in layer]
        if self.scoring == "magnitude":
            return magnitude_scores(dense, flat)
        return fisher(dense, calib.batches, flat, quiet=cfg.quiet)[0]

    def select(self, dense: nn.Module, scores, calib: Calibration, cfg) -> Selection:
        return Selection(top_weights(scores, cfg.sparsity))

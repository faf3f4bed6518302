"""Stage 1: importance of every prunable weight.

fisher:    S = W^2 * sum over batches of grad^2 (OBS saliency with a diagonal empirical Fisher; proportional
           to the estimated loss increase of zeroing w). Needs labelled calibration data.
magnitude: S = |W| (no data).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import PgbertError


def magnitude_scores(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: model.get_parameter(n).detach().abs().float().clone() for n in names}


def fisher_scores(
    model: nn.Module, batches: Iterable[dict], names: list[str], quiet: bool = True
) -> dict[str, torch.Tensor]:
    """Diagonal-Fisher saliency W^2 * sum_b (dL_b/dW)^2, model in eval mode, task loss on the labels."""
    params = [model.get_parameter(n) for n in names]
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    was_training = model.training
    model.eval()
    batches = list(batches)
    for batch in tqdm(batches, desc="importance", disable=quiet, leave=False):
        loss = model(**batch).loss
        grads = torch.autograd.grad(loss, params)
        for f, g in zip(fisher, grads):
            f.add_(g.detach().float().square())
    model.train(was_training)
    scores = {n: p.detach().float().square() * f for n, p, f in zip(names, params, fisher)}
    check_finite(scores)
    return scores


def check_finite(scores: dict[str, torch.Tensor]) -> None:
    for n, s in scores.items():
        if not torch.isfinite(s).all():
            raise PgbertError(
                f"importance scores of {n} contain NaN or inf; the model gives non-finite gradients on the "
                "calibration data: check it with `pgbert evaluate`, or use --importance magnitude"
            )

"""The interface every pruning method implements, and what the pipeline hands it.

A method runs in three steps, each called by pgbert.pipeline (so `pgbert prune --method X` and
`pgbert compare` run the same code):
  importance(dense, calib, cfg)                    -> scores (budget-free: compare reuses them per budget)
  select(dense, scores, calib, cfg)                -> Selection (0/1 weight masks for the budget in cfg)
  update(dense, pruned, selection, scores, calib, cfg) -> report dict (in place: compensation, rescaling)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import PgbertError
from ..stages.compensation import compensate, task_loss


@dataclass
class Calibration:
    """Calibration data for one seed: the drawn training examples, their batches, the compensation subset,
    held-out check batches (never drawn for calibration) and facts about the task."""

    examples: list[dict]
    batches: list[dict]
    fit: list[dict]
    check: list[dict]
    check_examples: int
    task_kind: str  # "classification" | "regression" | "qa"
    dev_seq_len: float  # average tokenised length of the dev examples (Kwon et al.'s MAC sequence length)


@dataclass
class Selection:
    """What a method keeps: masks on the prunable weights plus method-specific details for the report."""

    masks: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


class Method:
    name: str = ""
    sampling: str = "shuffle"  # calibration draw: "shuffle" (without replacement) | "with-replacement"
    budget: str = "weights"  # "weights": --sparsity | "macs": --flops-ratio (or MACs <= 1 - --sparsity)
    structured: bool = True  # False: masks a compact model cannot use (no speedup)
    latency: bool = False  # True: takes a measured-time budget (--speedup / --latency-ms)

    def check_budget(self, cfg) -> None:
        if cfg.latency_budget and not self.latency:
            raise PgbertError(
                f"method {self.name} has no latency budget; give --sparsity (or use --method pgb)"
            )
        if self.budget == "weights" and cfg.sparsity is None and not cfg.latency_budget:
            raise PgbertError(f"method {self.name} prunes to a weight budget: give --sparsity")

    def importance(self, dense: nn.Module, calib: Calibration, cfg) -> Any:
        raise NotImplementedError

    def select(self, dense: nn.Module, scores: Any, calib: Calibration, cfg) -> Selection:
        raise NotImplementedError

    def update(
        self, dense: nn.Module, pruned: nn.Module, sel: Selection, scores: Any, calib: Calibration, cfg
    ) -> dict:
        return {}


def least_squares_update(dense, pruned, sel: Selection, calib: Calibration, cfg) -> dict:
    """Stage 5 of the methods that compensate (PGB, structured Fisher): ridge least squares on the fit
    batches toward cfg.compensation_target, guarded by the held-out task loss on the check batches (nothing
    when cfg.compensate is off)."""
    if not cfg.compensate:
        return {}
    return compensate(
        dense,
        pruned,
        sel.masks,
        calib.fit,
        calib.check,
        task_loss,
        damp=cfg.compensation_damp,
        quiet=cfg.quiet,
        target=cfg.compensation_target,
        tokens=fit_tokens(cfg, calib),
    )


def fit_tokens(cfg, calib: Calibration) -> str:
    """The tokens compensation fits (cfg.compensation_tokens; every token for extractive QA, whose head
    reads them all)."""
    return "all" if calib.task_kind == "qa" else cfg.compensation_tokens

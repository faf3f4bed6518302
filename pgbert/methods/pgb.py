"""PGB, as ../shared/METHOD.md defines it: importance -> grouping by permutation -> budget allocation
(group count, kept blocks, dropped sublayers) -> masks in original coordinates -> compensation.
Re-finetuning and the compact export are the pipeline's, shared by every method."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..adapters import adapter_for, prunable_names
from ..errors import PgbertError
from ..stages.allocation import LatencyInfeasible, OptionSpace, choose_masks, predicted_ms
from ..stages.compensation import compensate, task_loss
from ..stages.importance import (
    fisher,
    fisher_and_units,
    head_importance,
    magnitude_scores,
    unit_calibrate,
)
from ..training import apply_masks
from .base import Calibration, Method, Selection


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
        for t in range(1, cfg.importance_steps):
            start = time.perf_counter()
            frac = t / cfg.importance_steps
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
            head_values=head_values,
        )
        names = prunable_names(dense)
        measure = drop_measure(dense, calib, cfg) if cfg.drop_check and cfg.allow_drop else None

        def choose(b: LatencyBudget | None):
            try:
                return choose_masks(
                    weight_scores, names, space, cfg.sparsity, measure, b.knapsack() if b else None
                )
            except LatencyInfeasible as e:
                raise b.unreachable(e) from None

        if budget is None:
            chosen, masks, checks = choose(None)
        else:
            (chosen, masks, checks), steps = budget.choose_measured(dense, names, choose, final)
        report = {"matrices": matrix_report(weight_scores, chosen, masks), "drop_checks": checks}
        if budget:
            report["latency"] = budget.report(predicted_ms(chosen, names, budget.table, budget.head_dim))
            report["latency"]["calibration"] = steps
        return Selection(masks, {"chosen": chosen}, report)

    def update(self, dense, pruned, sel: Selection, scores, calib: Calibration, cfg) -> dict:
        """Stage 5: least-squares compensation, guarded by the held-out task loss."""
        if not cfg.compensate:
            return {}
        return compensate(
            dense,
            pruned,
            sel.masks,
            calib.fit,
            calib.check,
            task_loss,
            quiet=cfg.quiet,
            target=cfg.compensation_target,
        )


OVERSHOOT = 1.1  # a measured speedup above 1.1 x the target wastes accuracy: the budget is loosened


@dataclass
class LatencyBudget:
    """A measured-time budget: the cost table at the deployment setting and the time left for the encoder's
    sublayers (the target time less the fixed part: embeddings, LayerNorms, head)."""

    table: object
    head_dim: int
    target_ms: float
    target_speedup: float

    @classmethod
    def of(cls, dense: nn.Module, cfg) -> LatencyBudget | None:
        if not cfg.latency_budget:
            return None
        from ..profile import cost_table

        table = cost_table(dense, cfg.setting(), quiet=cfg.quiet)
        dense_ms = table.dense_ms()
        limits = [cfg.latency_ms, None if cfg.speedup is None else dense_ms / cfg.speedup]
        target = min(t for t in limits if t is not None)  # both given: both hold
        head_dim = adapter_for(dense.config).head_size(dense.config)
        return cls(table, head_dim, target, dense_ms / target)

    @property
    def sublayer_ms(self) -> float:
        return self.target_ms - self.table.fixed_ms

    def partway(self, frac: float) -> LatencyBudget:
        """The budget a fraction `frac` of the way (geometrically, in sublayer time) from dense to this one."""
        dense_layers = self.table.dense_ms() - self.table.fixed_ms
        layers = dense_layers * (max(self.sublayer_ms, 1e-9) / dense_layers) ** frac
        return LatencyBudget(self.table, self.head_dim, layers + self.table.fixed_ms, self.target_speedup)

    def knapsack(self) -> tuple:
        if self.sublayer_ms <= 0:
            raise self.unreachable(None)
        return self.table, self.head_dim, self.sublayer_ms

    def unreachable(self, e: LatencyInfeasible | None) -> PgbertError:
        fastest = self.table.fixed_ms + (e.fastest_ms if e else 0.0)
        return PgbertError(
            f"{self.target_speedup:.2f}x ({self.target_ms:.1f} ms) is out of reach at this setting: the largest "
            f"reachable speedup is {self.table.dense_ms() / fastest:.2f}x ({fastest:.1f} ms); ask for less"
        )

    def choose_measured(self, dense: nn.Module, names, choose, measured: bool = True, rounds: int = 2):
        """choose(budget) -> (chosen, masks, ...) under this budget; with `measured`, the compact model of
        the choice is timed against the dense one at the setting, and while it misses the target (short of
        it, or more than OVERSHOOT above), the budget is rescaled by the miss and the knapsack solved again,
        at most `rounds` times (the table misses what a whole model adds: caches shared by layers, small-op
        overheads at batch 1). Returns the measured choice closest above the target (else the fastest) and
        each round's predicted and measured speedup."""
        budget, steps, results = self, [], []
        while True:
            try:
                result = choose(budget)
            except PgbertError:
                if not results:
                    raise
                steps[-1]["rescaled_out_of_reach"] = True  # keep the measured choices so far
                break
            if not measured:
                return result, steps
            chosen, masks = result[0], result[1]
            predicted = self.table.dense_ms() / predicted_ms(chosen, names, self.table, self.head_dim)
            got = measure_choice(dense, masks, self.table.data["setting"])
            steps.append({"target_speedup": budget.target_speedup, "predicted": predicted, "measured": got})
            results.append((got, result))
            if self.target_speedup <= got <= OVERSHOOT * self.target_speedup or len(steps) > rounds:
                break
            target_ms = budget.target_ms * got / self.target_speedup
            budget = replace(budget, target_ms=target_ms, target_speedup=self.table.dense_ms() / target_ms)
        met = [r for r in results if r[0] >= self.target_speedup]
        return (min(met, key=lambda r: r[0]) if met else max(results, key=lambda r: r[0]))[1], steps

    def report(self, predicted: float) -> dict:
        dense_ms = self.table.dense_ms()
        return {
            "target_ms": self.target_ms,
            "target_speedup": self.target_speedup,
            "predicted_ms": predicted,
            "predicted_speedup": dense_ms / predicted,
            "dense_predicted_ms": dense_ms,
            "fixed_ms": self.table.fixed_ms,
            "setting": self.table.data["setting"],
            "environment": self.table.data["environment"],
            "cost_table": self.table.data.get("cache"),
        }


def measure_choice(dense: nn.Module, masks: dict[str, torch.Tensor], setting: dict) -> float:
    """Measured speedup of the compact model of `masks` (uncompensated weights: the same shapes) over the
    dense model at the deployment setting."""
    from ..bench import measure
    from ..compact.model import to_compact

    pruned = copy.deepcopy(dense)
    apply_masks(pruned, masks)
    s = setting
    res = measure(
        to_compact(pruned, masks),
        dense,
        s["batch_size"],
        s["seq_len"],
        s["threads"] or None,
        s["device"],
        6,
        s["dtype"],
    )
    dense.to("cpu", torch.float32)
    return res["speedup"]


def drop_measure(dense: nn.Module, calib: Calibration, cfg):
    """The drop check's measure: held-out task loss of the model pruned to `masks` and compensated on
    cfg.drop_check_samples calibration examples, without the guards (compensation recovers much of what
    a kept sublayer loses and little of a dropped one's, so the masked loss alone would favour drops)."""
    fit = calib.fit[: max(1, cfg.drop_check_samples // cfg.batch_size)]

    def measure(masks: dict[str, torch.Tensor]) -> float:
        pruned = copy.deepcopy(dense)
        apply_masks(pruned, masks)
        if cfg.compensate:
            compensate(dense, pruned, masks, fit, None, task_loss, target=cfg.compensation_target)
        return task_loss(pruned, calib.check)

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

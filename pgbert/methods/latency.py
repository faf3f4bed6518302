"""A measured-time budget shared by the methods that take one (PGB, structured Fisher, Kwon et al.'s
latency mode): the cost table at the deployment setting, the time it leaves for the encoder's sublayers,
and the measured rounds that correct the table's prediction with the compact model's real time.

A method hands `LatencyBudget.choose_measured` a function choose(budget) -> (masks, predicted_ms, result)
that selects under one budget; the rounds are the same for every method, so a comparison at equal speed
compares what each method keeps, not how well its time model happens to fit."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..adapters import adapter_for
from ..errors import PgbertError
from ..stages.allocation import LatencyInfeasible
from ..training import apply_masks

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

    def sublayer_budget(self) -> float:
        """The sublayers' time budget (ms); an error naming the reachable speedup when none is left."""
        if self.sublayer_ms <= 0:
            raise self.unreachable(None)
        return self.sublayer_ms

    def knapsack(self) -> tuple:
        return self.table, self.head_dim, self.sublayer_budget()

    def unreachable(self, e: LatencyInfeasible | None) -> PgbertError:
        fastest = self.table.fixed_ms + (e.fastest_ms if e else 0.0)
        return PgbertError(
            f"{self.target_speedup:.2f}x ({self.target_ms:.1f} ms) is out of reach at this setting: the largest "
            f"reachable speedup is {self.table.dense_ms() / fastest:.2f}x ({fastest:.1f} ms); ask for less"
        )

    def choose_measured(self, dense: nn.Module, choose, measured: bool = True, rounds: int = 2):
        """choose(budget) -> (masks, predicted_ms, result) under one budget; with `measured`, the compact
        model of the choice is timed against the dense one at the setting, and while it misses the target
        (short of it, or more than OVERSHOOT above), the budget is rescaled by the miss and the choice made
        again, at most `rounds` times (the table misses what a whole model adds: caches shared by layers,
        small-op overheads at batch 1). Returns the result of the measured choice closest above the target
        (else the fastest) and each round's predicted and measured speedup."""
        budget, steps, results = self, [], []
        while True:
            try:
                masks, predicted, result = choose(budget)
            except PgbertError:
                if not results:
                    raise
                steps[-1]["rescaled_out_of_reach"] = True  # keep the measured choices so far
                break
            if not measured:
                return result, steps
            got = measure_choice(dense, masks, self.table.data["setting"])
            step = {"target_speedup": budget.target_speedup, "predicted": self.table.dense_ms() / predicted}
            steps.append({**step, "measured": got})
            results.append((got, result))
            if self.target_speedup <= got <= OVERSHOOT * self.target_speedup or len(steps) > rounds:
                break
            target_ms = budget.target_ms * got / self.target_speedup
            budget = replace(budget, target_ms=target_ms, target_speedup=self.table.dense_ms() / target_ms)
        met = [r for r in results if r[0] >= self.target_speedup]
        return (min(met, key=lambda r: r[0]) if met else max(results, key=lambda r: r[0]))[1], steps

    def report(self, predicted: float, steps: list[dict]) -> dict:
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
            "calibration": steps,
        }


def units_ms(table, keep: list[dict]) -> float:
    """The cost table's time of a structured choice (whole heads, whole FFN neurons at full width): the
    fixed part plus each layer's attention by its kept head count and FFN by its kept neuron count."""
    d = table.geometry.hidden
    total = table.fixed_ms
    for k in keep:
        total += table.attention_ms[int(k["head"].sum())] + table.ffn_ms(int(k["neuron"].sum()), d, d)
    return total


def measure_choice(dense: nn.Module, masks: dict[str, torch.Tensor], setting: dict) -> float:
    """Measured speedup of the compact model of `masks` (uncompensated weights: the same shapes) over the
    dense model at the deployment setting."""
    from ..bench import measure_compact
    from ..profile import Setting

    pruned = copy.deepcopy(dense)
    apply_masks(pruned, masks)
    return measure_compact(pruned, masks, dense, Setting(**setting), 6)["speedup"]

"""Stage 3: budget allocation (group count, kept blocks, dropped sublayers) as a multiple-choice knapsack.

Each matrix offers options "keep these blocks" with a cost (kept weights) and a value (kept score):
  - empty (k = 0; may drop the sublayer) and dense;
  - grouped: a G-grouping by permutation, keep its k >= 2 best diagonal blocks;
  - submatrix: one block, a row subset x column subset of several sizes optimised directly (it
    dominates "1 block of G" because it is free to pick any rows and columns).
Choose one option per matrix maximising total value under sum(cost) <= budget: Lagrangian bisection on
the price of a weight, then a greedy fix-up that spends what is left, to within one block.
Since the scores estimate loss increase, this minimises the estimated loss increase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .grouping import best_grid_block, best_submatrix, group, identity_grouping

Blocks = list[tuple[torch.Tensor, torch.Tensor]]  # (row indices, column indices) per kept block

FRACTIONS = (1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 7 / 8, 1.0)
GROUP_COUNTS = (2, 4, 8)


@dataclass
class Option:
    kind: str  # "empty" | "dense" | "grouped" | "submatrix"
    cost: int
    value: float
    identity_value: float  # the same budget kept without permutation (contiguous blocks)
    groups: int
    blocks_kept: int
    blocks: Callable[[], Blocks]
    shape: tuple[int, int] = (0, 0)  # block shape


def matrix_options(
    S: torch.Tensor,
    group_counts: tuple[int, ...] = GROUP_COUNTS,
    fractions: tuple[float, ...] = FRACTIONS,
    permute: bool = True,
    align: int = 16,
    submatrix: bool = True,
) -> list[Option]:
    """All options for one score matrix. permute=False gives the no-permutation ablation; submatrix=False
    offers only G-groupings (k = 1..G blocks), the method without direct sub-matrix search."""
    m, n = S.shape
    total = float(S.double().sum())
    full = (torch.arange(m), torch.arange(n))
    opts = [
        Option("empty", 0, 0.0, 0.0, 1, 0, lambda: [], (0, 0)),
        Option("dense", m * n, total, total, 1, 1, lambda: [full], (m, n)),
    ]
    for G in group_counts:
        if m % G or n % G or G < 2:
            continue
        g = group(S, G) if permute else identity_grouping(S.float(), G)
        ident = torch.sort(identity_grouping(S.float(), G).block_scores, descending=True).values
        order = torch.argsort(g.block_scores, descending=True)
        for k in range(2 if submatrix else 1, G + 1):
            kept = order[:k].tolist()
            opts.append(
                Option(
                    "grouped",
                    k * (m // G) * (n // G),
                    float(g.block_scores[order[:k]].sum()),
                    float(ident[:k].sum()),
                    G,
                    k,
                    _grouped_blocks(g, kept),
                    (m // G, n // G),
                )
            )
    if not submatrix:
        return opts
    sizes_r = sorted({_round(f * m, align, m) for f in fractions})
    sizes_c = sorted({_round(f * n, align, n) for f in fractions})
    for r in sizes_r:
        rows0 = None
        for c in sizes_c:
            if r == m and c == n:
                continue
            rr, cc, ident = best_grid_block(S, r, c)
            if permute:
                rr, cc, val = best_submatrix(S, r, c, rows0=rows0)
                rows0 = rr
            else:
                val = ident
            opts.append(Option("submatrix", r * c, val, ident, 1, 1, _fixed([(rr, cc)]), (r, c)))
    return opts


def _round(x: float, align: int, limit: int) -> int:
    v = int(round(x / align)) * align if limit >= 4 * align else int(round(x))
    return min(max(v, 1), limit)


def _fixed(blocks: Blocks) -> Callable[[], Blocks]:
    return lambda: blocks


def _grouped_blocks(g, kept: list[int]) -> Callable[[], Blocks]:
    def make() -> Blocks:
        return [(torch.nonzero(g.rows == b)[:, 0], torch.nonzero(g.cols == b)[:, 0]) for b in kept]

    return make


def allocate(options: list[list[Option]], budget: float) -> list[int]:
    """Multiple-choice knapsack: one option index per matrix, total cost <= budget, value maximal-ish."""
    K = max(len(o) for o in options)
    V = np.full((len(options), K), -np.inf)
    C = np.zeros((len(options), K))
    for i, opts in enumerate(options):
        V[i, : len(opts)] = [o.value for o in opts]
        C[i, : len(opts)] = [o.cost for o in opts]
    rows = np.arange(len(options))

    def choose(lam: float) -> np.ndarray:
        return np.argmax(V - lam * C, axis=1)

    with np.errstate(divide="ignore", invalid="ignore"):
        hi = float(np.nanmax(np.where(C > 0, V / np.maximum(C, 1), 0))) * 2 + 1e-30
    lo = 0.0
    if C[rows, choose(lo)].sum() <= budget:
        pick = choose(lo)
    else:
        for _ in range(100):
            mid = (lo + hi) / 2
            if C[rows, choose(mid)].sum() > budget:
                lo = mid
            else:
                hi = mid
        pick = choose(hi)
    # Greedy fix-up: spend the remaining budget on the best value-per-weight upgrades that fit.
    while True:
        left = budget - C[rows, pick].sum()
        dC = C - C[rows, pick][:, None]
        dV = V - V[rows, pick][:, None]
        ok = (dC > 0) & (dC <= left) & (dV > 0)
        if not ok.any():
            break
        ratio = np.where(ok, dV / np.where(ok, dC, 1), -np.inf)
        i, j = np.unravel_index(np.argmax(ratio), ratio.shape)
        pick[i] = j
    for _ in range(200):  # exchanges: downgrade one matrix to pay for a better upgrade of another
        if not _exchange(V, C, pick, budget):
            break
    return pick.tolist()


def _exchange(V: np.ndarray, C: np.ndarray, pick: np.ndarray, budget: float) -> bool:
    rows = np.arange(len(pick))
    left = budget - C[rows, pick].sum()
    dC, dV = C - C[rows, pick][:, None], V - V[rows, pick][:, None]
    up = np.argwhere((dC > 0) & np.isfinite(dV) & (dV > 0))
    down = np.argwhere((dC < 0) & np.isfinite(dV))
    if not len(up) or not len(down):
        return False
    need, gain = dC[up[:, 0], up[:, 1]], dV[up[:, 0], up[:, 1]]
    order = np.argsort(need)
    need, gain, up = need[order], gain[order], up[order]
    run_max = np.maximum.accumulate(gain)  # best gain among upgrades needing at most need[k]
    best_idx = np.maximum.accumulate(np.where(gain >= run_max, np.arange(len(gain)), 0))
    freed, loss = -dC[down[:, 0], down[:, 1]], -dV[down[:, 0], down[:, 1]]
    k = np.searchsorted(need, left + freed, side="right") - 1
    valid = k >= 0
    net = np.where(valid, run_max[np.maximum(k, 0)] - loss, -np.inf)
    for d in np.argsort(-net)[:20]:
        if net[d] <= 1e-12:
            return False
        u = up[best_idx[k[d]]]
        if u[0] != down[d][0]:
            pick[down[d][0]], pick[u[0]] = down[d][1], u[1]
            return True
    return False


def blocks_to_mask(shape: tuple[int, int], blocks: Blocks) -> torch.Tensor:
    mask = torch.zeros(shape)
    for r, c in blocks:
        mask[r[:, None], c] = 1.0
    return mask

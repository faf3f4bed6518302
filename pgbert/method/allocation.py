"""Stage 3: budget allocation (group count, kept blocks, dropped sublayers) as a multiple-choice knapsack.

Each matrix offers options "keep these blocks" with a cost (kept weights) and a value (kept score):
  - empty (k = 0; may drop the sublayer) and dense;
  - grouped: a G-grouping by permutation, keep its k >= 2 best diagonal blocks;
  - submatrix: one block, a row subset x column subset of several sizes optimised directly (it
    dominates "1 block of G" because it is free to pick any rows and columns).
Paired matrices (Q/K, V/O, FFN-in/out) decide their shared index set jointly (pair_options); attention
can instead be one item per layer whose options keep whole heads (head_options, pgbert's default).
Choose one option per item maximising total value under sum(cost) <= budget: Lagrangian bisection on
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
GROUP_COUNTS = (2, 4)  # G = 8 blocks run ~1.5x slower per weight (PERF.md); pass group_counts to widen


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


PAIRS = (("q", "k", 0, 0), ("v", "o", 0, 1), ("ffn_in", "ffn_out", 0, 1))  # A, B, shared axis of A, of B
PAIR_FREE_FRACTIONS = (1 / 4, 1 / 2, 3 / 4, 1.0)
# Shared-axis sizes of a pair sub-matrix (kept neurons of an FFN pair): steps of 1/16, finer than the 1/8
# of single matrices, so the knapsack sizes the FFN about as finely as attention (one head is 1/12 of a
# layer's) and as the neuron-by-neuron structured baseline. A superset of the 1/8 steps. Measured one-shot
# on the MiniLM (3 seeds, after compensation): 0.865 vs 0.859 at 0.5, 0.796 vs 0.801 at 0.88.
PAIR_SHARED_FRACTIONS = tuple(i / 16 for i in range(1, 17))


def pair_options(
    SA: torch.Tensor,
    SB: torch.Tensor,
    axis_a: int,
    axis_b: int,
    group_counts: tuple[int, ...] = GROUP_COUNTS,
    fractions: tuple[float, ...] = PAIR_SHARED_FRACTIONS,
    permute: bool = True,
    align: int = 16,
) -> list[tuple[Option, Option]]:
    """Options for two matrices that only work together, deciding their shared index set jointly.

    The shared axis is Q and K rows (query/key dims), V rows and O columns (value dims), FFN-in rows and
    FFN-out columns (neurons): a dim kept in one but not the other is wasted budget. A pair sub-matrix
    option keeps n shared indices N, c_A free indices of A and c_B of B; N starts from the joint marginal
    ranking and is refined once given the chosen free indices. Grouped options (k >= 2 of G blocks per
    matrix), empty and dense complete the list.
    """
    A = (SA if axis_a == 0 else SA.T).float()
    B = (SB if axis_b == 0 else SB.T).float()
    n_shared = A.shape[0]
    opts_a = matrix_options(SA, group_counts, fractions, permute, align, submatrix=False)
    opts_b = matrix_options(SB, group_counts, fractions, permute, align, submatrix=False)
    out = [
        (a, b)
        for a, b in zip(opts_a, opts_b)
        if (a.kind, a.groups, a.blocks_kept) == (b.kind, b.groups, b.blocks_kept)
    ]
    out = [(a, b) for a, b in out if a.kind != "grouped" or a.blocks_kept >= 2]
    u = A.sum(1) + B.sum(1)
    order = torch.argsort(u, descending=True)
    ns = sorted({_round(f * n_shared, align, n_shared) for f in fractions})
    cas = sorted({_round(f * A.shape[1], align, A.shape[1]) for f in PAIR_FREE_FRACTIONS})
    cbs = sorted({_round(f * B.shape[1], align, B.shape[1]) for f in PAIR_FREE_FRACTIONS})
    for n in ns:
        rmask = _mask(order[:n], n_shared)
        id_rows = _best_chunk(u, n)
        id_mask = _mask(id_rows, n_shared)
        idA, idB = id_mask @ A, id_mask @ B  # column sums over the unpermuted shared rows
        # Free indices given the marginal shared rows (top-c prefixes), and each choice's pull on rows.
        topA = torch.topk(rmask @ A, max(cas)).indices
        topB = torch.topk(rmask @ B, max(cbs)).indices
        pullA = {ca: A @ _mask(topA[:ca], A.shape[1]) for ca in cas}
        pullB = {cb: B @ _mask(topB[:cb], B.shape[1]) for cb in cbs}
        for ca in cas:
            for cb in cbs:
                if n == n_shared and ca == A.shape[1] and cb == B.shape[1]:
                    continue
                ia, ib = _best_chunk(idA, ca), _best_chunk(idB, cb)
                id_a, id_b = float(idA[ia].sum()), float(idB[ib].sum())
                rows, va, vb = id_rows, id_a, id_b
                if permute:  # shared rows given the free indices, then the free indices again
                    p_rows = torch.topk(pullA[ca] + pullB[cb], n).indices
                    pm = _mask(p_rows, n_shared)
                    ca_p, cb_p = torch.topk(pm @ A, ca), torch.topk(pm @ B, cb)
                    pa, pb = float(ca_p.values.double().sum()), float(cb_p.values.double().sum())
                    if pa >= id_a and pb >= id_b:  # never below the unpermuted choice, matrix by matrix
                        rows, ia, ib, va, vb = p_rows, ca_p.indices, cb_p.indices, pa, pb
                rows, ia, ib = torch.sort(rows).values, torch.sort(ia).values, torch.sort(ib).values
                out.append(
                    (_pair_part(SA, axis_a, rows, ia, va, id_a), _pair_part(SB, axis_b, rows, ib, vb, id_b))
                )
    return out


def _mask(idx: torch.Tensor, size: int) -> torch.Tensor:
    m = torch.zeros(size)
    m[idx] = 1.0
    return m


def _best_chunk(v: torch.Tensor, size: int) -> torch.Tensor:
    """The contiguous aligned chunk of `size` indices with the largest sum (the no-permutation choice)."""
    chunks = v[: v.numel() - v.numel() % size].view(-1, size).sum(1)
    i = int(chunks.argmax())
    return torch.arange(i * size, (i + 1) * size)


def _pair_part(S, axis, shared, free, value, ident) -> Option:
    rows, cols = (shared, free) if axis == 0 else (free, shared)
    return Option(
        "pair-submatrix",
        rows.numel() * cols.numel(),
        value,
        ident,
        1,
        1,
        _fixed([(rows, cols)]),
        (rows.numel(), cols.numel()),
    )


def head_options(shapes: list[tuple[int, int]], head_value: torch.Tensor) -> list[list[Option]]:
    """Attention options that keep whole heads: the h most important heads (h = 0..H) with all their Q, K,
    V rows and O columns at full hidden width; shapes are those of Q, K, V, O. An option's value is its
    kept heads' importance, split evenly over the four matrices; h = 0 drops the attention sublayer.

    Why: pruning dims inside heads (pair sub-matrices) leaves many heads with 1-4 Q/K dims, whose
    attention patterns a second-order estimate around the dense model cannot price. On the MiniLM, one
    shot after compensation, 3 seeds: 0.801 vs 0.785 at 0.88, 0.859 vs 0.856 at 0.5 (whole heads vs
    dims; benchmarks/results/ablation-attention.txt)."""
    H = head_value.numel()
    hd = shapes[0][0] // H
    order = torch.argsort(head_value.double(), descending=True, stable=True)
    out = []
    for h in range(H + 1):
        kept = torch.sort(order[:h]).values
        dims = (kept[:, None] * hd + torch.arange(hd)).flatten()
        value = float(head_value.double()[kept].sum()) / len(shapes)
        kind = "empty" if h == 0 else "dense" if h == H else "heads"
        parts = []
        for i, (m, n) in enumerate(shapes):
            rows, cols = (dims, torch.arange(n)) if i < 3 else (torch.arange(m), dims)
            blocks = [] if h == 0 else [(rows, cols)]
            parts.append(
                Option(
                    kind,
                    rows.numel() * cols.numel() if h else 0,
                    value,
                    value,
                    1,
                    int(h > 0),
                    _fixed(blocks),
                    (rows.numel(), cols.numel()) if h else (0, 0),
                )
            )
        out.append(parts)
    return out

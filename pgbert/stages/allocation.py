"""Stage 3: budget allocation (group count, kept blocks, dropped sublayers) as a multiple-choice knapsack.

Each matrix offers options "keep these blocks" with a cost (kept weights) and a value (kept score):
  - empty (k = 0; may drop the sublayer) and dense;
  - grouped: a G-grouping by permutation, keep its k >= 2 best diagonal blocks;
  - submatrix: one block, a row subset x column subset of several sizes optimised directly (it
    dominates "1 block of G" because it is free to pick any rows and columns).
Paired matrices (Q/K, V/O, FFN-in/out) decide their shared index set jointly (pair_options); attention
can instead be one item per layer whose options keep whole heads (head_options, pgbert's default).
Choose one option per item maximising total value under sum(cost) <= budget, exactly (a small MILP).
Since the scores estimate loss increase, this minimises the estimated loss increase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..adapters import MATRICES
from ..errors import PgbertError
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


def allocate(
    options: list[list[Option]], budget: float, time_limit: float = 60.0, ms_budget: float | None = None
) -> list[int]:
    """Multiple-choice knapsack, solved exactly: one option index per item, total cost <= budget (and, with
    ms_budget, total measured time `ms` <= ms_budget), total value maximal (scipy.optimize.milp, HiGHS;
    relative gap 1e-6). A budget that even the cheapest option of every item exceeds is infeasible and
    raises InfeasibleBudget."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    cheapest = sum(min(o.cost for o in opts) for opts in options)
    if cheapest > budget:
        raise InfeasibleBudget(cheapest, budget)
    if ms_budget is not None:
        fastest = sum(min(o.ms for o in opts) for opts in options)
        if fastest > ms_budget:
            raise InfeasibleBudget(fastest, ms_budget, "ms")
    costs = np.array([o.cost for opts in options for o in opts], dtype=float)
    values = np.array([o.value for opts in options for o in opts], dtype=float)
    item = np.repeat(np.arange(len(options)), [len(o) for o in options])
    scale = float(np.abs(values).max()) or 1.0
    one_each = csr_array((np.ones(len(item)), (item, np.arange(len(item)))), shape=(len(options), len(item)))
    constraints = [
        LinearConstraint(one_each, 1, 1),
        LinearConstraint(costs[None, :] / max(budget, 1.0), -np.inf, budget / max(budget, 1.0)),
    ]
    if ms_budget is not None:
        ms = np.array([o.ms for opts in options for o in opts], dtype=float)
        constraints.append(LinearConstraint(ms[None, :] / ms_budget, -np.inf, 1.0))
    res = milp(
        -values / scale,
        integrality=np.ones(len(item)),
        bounds=Bounds(0, 1),
        constraints=constraints,
        options={"time_limit": time_limit, "mip_rel_gap": 1e-6},
    )
    if res.x is None:
        raise RuntimeError(f"the knapsack solver found no solution: {res.message}")
    x = np.round(res.x).astype(bool)
    starts = np.concatenate([[0], np.cumsum([len(o) for o in options])])
    pick = [int(np.flatnonzero(x[a:b])[0]) for a, b in zip(starts[:-1], starts[1:])]
    spent = sum(opts[i].cost for opts, i in zip(options, pick))
    if spent > budget:  # rounding of the scaled constraint; never return an over-budget choice
        raise RuntimeError(f"knapsack choice costs {spent} > budget {budget}")
    if ms_budget is not None:
        spent_ms = sum(opts[i].ms for opts, i in zip(options, pick))
        if spent_ms > ms_budget * (1 + 1e-9):
            raise RuntimeError(f"knapsack choice takes {spent_ms:.3f} ms > budget {ms_budget:.3f} ms")
    return pick


class InfeasibleBudget(ValueError):
    def __init__(self, cheapest: float, budget: float, unit: str = "weights"):
        what = f"keeps {cheapest:.0f} weights" if unit == "weights" else f"takes {cheapest:.2f} ms"
        super().__init__(
            f"the cheapest choice {what}, over the budget of {budget:.{0 if unit == 'weights' else 2}f}"
        )
        self.cheapest, self.budget, self.unit = cheapest, budget, unit


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
LOW_ALIGN = 16  # the neuron counts OptionSpace.ffn_low adds below the first step: 16, 32, ...


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


@dataclass
class Choice:
    """One knapsack option for an item (one matrix, or a pair deciding its shared index set jointly).
    ms: its measured time at the deployment setting (set by price_items for latency budgets)."""

    parts: tuple[Option, ...]
    ms: float = 0.0

    @property
    def cost(self) -> int:
        return sum(o.cost for o in self.parts)

    @property
    def value(self) -> float:
        return sum(o.value for o in self.parts)


def price_items(items: list, names: list[list[str]], table, head_dim: int) -> None:
    """Set every choice's time from a measured cost table (pgbert.profile.CostTable): attention by its kept
    head count, an FFN pair by kept neurons x input width x output width (or its grouped layout)."""
    kinds = {tuple(layer[:4]): "heads" for layer in names} | {tuple(layer[4:]): "ffn" for layer in names}
    for item, choices in items:
        kind = kinds.get(tuple(item))
        if kind is None:
            raise PgbertError(
                "a latency budget needs the default option space (whole heads, FFN pairs); "
                "drop --attention blocks and the pairing ablations"
            )
        for c in choices:
            c.ms = _parts_ms(kind, c.parts, table, head_dim)


def predicted_ms(chosen: dict[str, Option], names: list[list[str]], table, head_dim: int) -> float:
    """The cost table's time of a whole choice: the fixed part plus every layer's attention and FFN."""
    total = table.fixed_ms
    for layer in names:
        total += _parts_ms("heads", [chosen[n] for n in layer[:4]], table, head_dim)
        total += _parts_ms("ffn", [chosen[n] for n in layer[4:]], table, head_dim)
    return total


def _parts_ms(kind: str, parts, table, head_dim: int) -> float:
    a, b = parts[0], parts[-1]
    if a.kind == "empty":
        return 0.0
    if kind == "heads":
        return table.attention_ms[a.shape[0] // head_dim]
    if a.kind == "grouped":
        return table.grouped_ms[(a.groups, a.blocks_kept)]
    return table.ffn_ms(a.shape[0], a.shape[1], b.shape[0])  # FFN-in (neurons x in), FFN-out (out x neurons)


@dataclass(frozen=True)
class OptionSpace:
    """Which options the knapsack offers (PGB's defaults; each switch off is an ablation)."""

    whole_heads: bool = True  # attention: one item per layer keeping h whole heads (False: Q/K, V/O pairs)
    pairing: bool = True  # decide Q/K, V/O and FFN-in/out index sets jointly (False: matrix by matrix)
    submatrix: bool = True  # sub-matrix options (False: only G-groupings with k >= 2 blocks, dense, empty)
    permute: bool = True  # False: identity grouping (contiguous blocks)
    group_counts: tuple[int, ...] = GROUP_COUNTS
    ffn_steps: int = 16  # FFN pairs keep neurons in steps of 1/ffn_steps
    fixed_groups: int | None = None  # ablation: every matrix keeps k = (1-s) G^2 (<= G) of its G blocks
    allow_drop: bool = True  # False: every matrix keeps at least one block (no sublayer dropping)
    free_widths: bool = True  # False: FFN pair sub-matrices keep full hidden width (neurons only)
    ffn_low: bool = False  # True: below the first 1/ffn_steps step, FFN pairs may keep 16, 32, ... neurons
    head_values: list[torch.Tensor] | None = field(default=None, repr=False)  # per layer, per head


def build_items(
    scores: dict[str, torch.Tensor], names: list[list[str]], space: OptionSpace, sparsity: float
) -> list[tuple[tuple[str, ...], list[Choice]]]:
    """Knapsack items with their options: per layer, the attention heads (or the Q/K and V/O pairs) and the
    FFN pair, or six single matrices."""
    items = []
    whole_heads = space.whole_heads and not space.fixed_groups
    if whole_heads and space.head_values is None:
        raise ValueError("whole-head attention needs head_values (one importance per head and layer)")
    fractions = tuple(i / space.ffn_steps for i in range(1, space.ffn_steps + 1))
    for li, layer in enumerate(names):
        by = dict(zip(MATRICES, layer))
        if whole_heads:
            shapes = [tuple(scores[n].shape) for n in layer[:4]]
            opts = head_options(shapes, space.head_values[li])
            items.append((tuple(layer[:4]), [Choice(tuple(p)) for p in opts]))
        if space.pairing and space.submatrix and not space.fixed_groups:
            for a, b, ax, bx in PAIRS[2:] if whole_heads else PAIRS:
                fr = fractions
                if space.ffn_low and a == "ffn_in":  # a nearly dropped FFN: its few best neurons
                    n = scores[by[a]].shape[0]
                    fr = fr + tuple(k / n for k in range(LOW_ALIGN, n // space.ffn_steps, LOW_ALIGN))
                opts = pair_options(
                    scores[by[a]], scores[by[b]], ax, bx, space.group_counts, fr, space.permute
                )
                if not space.free_widths:  # the shared axis only: full rows / columns on the free axes
                    full_a, full_b = scores[by[a]].shape[1 - ax], scores[by[b]].shape[1 - bx]
                    opts = [
                        (oa, ob)
                        for oa, ob in opts
                        if oa.kind != "pair-submatrix"
                        or (oa.shape[1 - ax], ob.shape[1 - bx]) == (full_a, full_b)
                    ]
                items.append(((by[a], by[b]), [Choice(p) for p in opts]))
        else:
            gc = (space.fixed_groups,) if space.fixed_groups else space.group_counts
            for n in layer[4:] if whole_heads else layer:
                opts = matrix_options(
                    scores[n], gc, permute=space.permute, submatrix=space.submatrix and not space.fixed_groups
                )
                items.append(((n,), [Choice((o,)) for o in opts]))
    for i, (item_names, choices) in enumerate(items):
        if space.fixed_groups:
            G = space.fixed_groups
            k = min(G, max(1, round((1 - sparsity) * G * G)))  # density k / G^2 = 1 - s where it can
            choices = [c for c in choices if all((o.groups, o.blocks_kept) == (G, k) for o in c.parts)]
        elif not space.allow_drop:
            choices = [c for c in choices if all(o.kind != "empty" for o in c.parts)]
        if not choices:
            raise PgbertError(
                f"{item_names[0]} has no pruning option with fixed_groups={space.fixed_groups}: the group "
                "count must divide both sides of every matrix; choose another"
            )
        items[i] = (item_names, choices)
    return items


def choose_options(
    scores: dict[str, torch.Tensor],
    names: list[list[str]],
    space: OptionSpace,
    sparsity: float,
    keep: frozenset[str] = frozenset(),
    items: list | None = None,
    ms_budget: float | None = None,
) -> dict[str, Option]:
    """Grouping options per item and the knapsack choice under (1 - sparsity) x the prunable weights (no
    weight limit when sparsity is None) and, with ms_budget, under that measured time of the sublayers
    (items priced by price_items). Sublayers that drop free their partner matrices' budget, so allocation
    repeats with those forced empty (the drop loop). Items holding a matrix named in `keep` may not drop
    (the drop check's alternative)."""
    total = sum(scores[n].numel() for layer in names for n in layer)
    budget = total if sparsity is None else (1.0 - sparsity) * total
    items = items or build_items(scores, names, space, sparsity or 0.0)
    forced: set[str] = set()
    for _ in range(4):
        cand = [_restrict(choices, set(item), forced, keep) for item, choices in items]
        try:
            pick = allocate(cand, budget, ms_budget=ms_budget)
        except InfeasibleBudget as e:
            if e.unit == "ms":
                raise LatencyInfeasible(e.cheapest, e.budget) from None
            raise PgbertError(
                f"sparsity {sparsity} cannot be met: {e}; use a lower --sparsity or allow layer dropping"
            ) from None
        chosen = {n: o for (item, _), c, i in zip(items, cand, pick) for n, o in zip(item, c[i].parts)}
        new = set(forced)
        for layer in names:
            empty = {k: chosen[n].kind == "empty" for k, n in zip(MATRICES, layer)}
            if empty["v"] or empty["o"]:
                new |= set(layer[:4])
            if empty["ffn_in"] or empty["ffn_out"]:
                new |= set(layer[4:])
        if new == forced or not space.allow_drop:
            break
        forced = new
    return chosen


class LatencyInfeasible(PgbertError):
    """A time budget below what the fastest allowed choice takes; the caller names the reachable speedup."""

    def __init__(self, fastest_ms: float, budget_ms: float):
        super().__init__(
            f"the fastest choice takes {fastest_ms:.2f} ms, over the budget of {budget_ms:.2f} ms"
        )
        self.fastest_ms, self.budget_ms = fastest_ms, budget_ms


def _restrict(choices: list[Choice], item: set[str], forced: set[str], keep: frozenset[str]) -> list[Choice]:
    if item & keep:
        return [c for c in choices if all(o.kind != "empty" for o in c.parts)]
    if item & forced:
        return [c for c in choices if all(o.kind == "empty" for o in c.parts)]
    return choices


def choose_masks(
    scores: dict[str, torch.Tensor],
    names: list[list[str]],
    space: OptionSpace,
    sparsity: float | None,
    measure: Callable[[dict[str, torch.Tensor]], torch.Tensor | float] | None = None,
    latency: tuple | None = None,
    drop_se: float = 0.0,
    best: bool = False,
) -> tuple[dict[str, Option], dict[str, torch.Tensor], list[dict]]:
    """Stages 2-4: grouping, allocation and the masks in original coordinates (re-permutation). With
    `measure` (masks -> per-example losses on held-out examples, lower is better), every sublayer the
    knapsack drops is checked against the allocation that must keep it (the drop check): the drop stands
    only if it measures lower by at least drop_se standard errors of the paired difference (drop_stands).
    Each check compares two neighbours, so a chain of kept drops can end on an allocation that measures
    worse than one passed on the way; with best=True the check ends on the lowest-loss allocation it
    measured when that beats the chain's end by drop_se standard errors (recorded as a check on "best").
    latency: (cost table, head dim, ms budget of the sublayers) for a measured-time budget."""
    items = build_items(scores, names, space, sparsity or 0.0)
    ms_budget = None
    if latency is not None:
        table, head_dim, ms_budget = latency
        price_items(items, names, table, head_dim)
    chosen = choose_options(scores, names, space, sparsity, items=items, ms_budget=ms_budget)
    masks = masks_of(chosen, scores, names)
    checks: list[dict] = []
    if measure is None or not dropped_sublayers(chosen, names):
        return chosen, masks, checks
    loss, keep, checked = measure(masks), frozenset(), set()
    measured = [(chosen, masks, loss)]
    while True:  # an allocation that keeps one sublayer may drop another: that drop is checked too
        pending = [(label, sub) for label, sub in dropped_sublayers(chosen, names) if label not in checked]
        if not pending:
            break
        label, sub = pending[0]
        checked.add(label)
        try:
            alt = choose_options(scores, names, space, sparsity, keep | set(sub), items, ms_budget)
        except PgbertError:
            continue  # the budget cannot keep it
        alt_masks = masks_of(alt, scores, names)
        alt_loss = measure(alt_masks)
        measured.append((alt, alt_masks, alt_loss))
        stands, diff, se = drop_stands(loss, alt_loss, drop_se)
        checks.append(
            {
                "sublayer": label,
                "loss_dropped": _mean(loss),
                "loss_kept": _mean(alt_loss),
                "difference_se": se,
                "dropped": stands,
            }
        )
        if not stands:
            chosen, masks, loss, keep = alt, alt_masks, alt_loss, keep | set(sub)
    low = min(measured, key=lambda m: _mean(m[2])) if best else None
    if low is not None and low[2] is not loss:
        better, _, se = drop_stands(low[2], loss, drop_se)
        checks.append(
            {"sublayer": "best", "loss_dropped": _mean(low[2]), "loss_kept": _mean(loss), "difference_se": se}
            | {"dropped": better, "drops": [label for label, _ in dropped_sublayers(low[0], names)]}
        )
        if better:
            chosen, masks = low[0], low[1]
    return chosen, masks, checks


def drop_stands(dropped, kept, drop_se: float) -> tuple[bool, float, float]:
    """Does a drop stand? Per-example losses of the allocation that drops a sublayer and of the one that
    keeps it, on the same held-out examples: it stands if mean(dropped - kept) + drop_se x its standard
    error <= 0 (drop_se = 0: any measured gain; scalar losses have no standard error). Returns the verdict,
    the mean difference and its standard error."""
    d = (
        torch.as_tensor(dropped, dtype=torch.float64).flatten()
        - torch.as_tensor(kept, dtype=torch.float64).flatten()
    )
    se = float(d.std() / d.numel() ** 0.5) if d.numel() > 1 else 0.0
    diff = float(d.mean())
    return diff + drop_se * se <= 0, diff, se


def _mean(loss) -> float:
    return float(torch.as_tensor(loss, dtype=torch.float64).mean())


def masks_of(chosen: dict[str, Option], scores: dict[str, torch.Tensor], names: list[list[str]]):
    return {n: blocks_to_mask(tuple(scores[n].shape), chosen[n].blocks()) for layer in names for n in layer}


def dropped_sublayers(chosen: dict[str, Option], names: list[list[str]]) -> list[tuple[str, tuple[str, ...]]]:
    """(label as in report.json, matrix names) of the sublayers (a layer's attention Q/K/V/O, its FFN
    in/out) whose matrices all keep nothing."""
    subs = [
        (f"layer{i}.{part}", tuple(ns))
        for i, layer in enumerate(names)
        for part, ns in (("attention", layer[:4]), ("ffn", layer[4:]))
    ]
    return [(label, sub) for label, sub in subs if all(chosen[n].kind == "empty" for n in sub)]

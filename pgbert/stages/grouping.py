"""Stage 2: grouping by permutation.

For a score matrix S (m x n) and a group count G dividing m and n, find disjoint row sets R_1..R_G and
column sets C_1..C_G (equal sizes) maximising J = sum_g S[R_g, C_g].sum(): after permuting rows and
columns, the important weights gather in G diagonal blocks. NP-hard; heuristic:
  - two starts: the identity order and a group-sort of rows/columns by their marginal scores;
  - alternate: with columns fixed, reassign rows to groups under equal capacity (exact sort for G = 2,
    pairwise swaps between groups otherwise), then the same for columns, until J stops improving.
The result never scores below the identity grouping.

`best_submatrix` optimises a single kept block directly (a row subset x column subset): when a matrix
keeps one block, this beats the best block of a G-grouping (METHOD.md, lessons).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Grouping:
    rows: torch.Tensor  # (m,) group of each row
    cols: torch.Tensor  # (n,) group of each column
    block_scores: torch.Tensor  # (G,)

    @property
    def groups(self) -> int:
        return int(self.block_scores.numel())

    @property
    def score(self) -> float:
        return float(self.block_scores.sum())


def identity_labels(size: int, groups: int) -> torch.Tensor:
    return torch.arange(size) // (size // groups)


def block_scores(S: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum of S over each diagonal block (R_g, C_g)."""
    per_row = _onehot(cols, groups, S.dtype)  # (n, G)
    A = S @ per_row  # (m, G): row i's score in each column group
    return torch.zeros(groups, dtype=S.dtype).index_add_(0, rows, A.gather(1, rows[:, None])[:, 0])


def identity_grouping(S: torch.Tensor, groups: int) -> Grouping:
    m, n = S.shape
    r, c = identity_labels(m, groups), identity_labels(n, groups)
    return Grouping(r, c, block_scores(S, r, c, groups))


def _onehot(labels: torch.Tensor, groups: int, dtype) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, groups).to(dtype)


def balanced_assign(A: torch.Tensor, start: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """Assign items (rows of A, N x G) to groups of equal size N/G maximising sum A[i, label_i].

    G = 2 is solved exactly by sorting on A[:,0] - A[:,1]. Otherwise improve `start` (a balanced labelling)
    by pairwise swaps: for groups a, b sort a's items by their gain of moving to b and b's by their gain
    of moving to a; swap the top pairs while the summed gain is positive.
    """
    N, G = A.shape
    if G == 1:
        return torch.zeros(N, dtype=torch.long)
    if G == 2:
        order = torch.argsort(A[:, 0] - A[:, 1], descending=True, stable=True)
        labels = torch.ones(N, dtype=torch.long)
        labels[order[: N // 2]] = 0
        return labels
    labels = start.clone()
    for _ in range(rounds):
        improved = False
        members = [torch.nonzero(labels == g)[:, 0] for g in range(G)]
        for a in range(G):
            for b in range(a + 1, G):
                ia, ib = members[a], members[b]
                ga = A[ia, b] - A[ia, a]
                gb = A[ib, a] - A[ib, b]
                sa, oa = torch.sort(ga, descending=True)
                sb, ob = torch.sort(gb, descending=True)
                t = int(((sa + sb) > 1e-12).sum())
                if t == 0:
                    continue
                move_a, move_b = ia[oa[:t]], ib[ob[:t]]
                labels[move_a], labels[move_b] = b, a
                members[a] = torch.cat([ia[oa[t:]], move_b])
                members[b] = torch.cat([ib[ob[t:]], move_a])
                improved = True
        if not improved:
            break
    return labels


def _sorted_start(marginal: torch.Tensor, groups: int) -> torch.Tensor:
    order = torch.argsort(marginal, descending=True, stable=True)
    labels = torch.empty_like(order)
    labels[order] = torch.arange(marginal.numel()) // (marginal.numel() // groups)
    return labels


def group(S: torch.Tensor, groups: int, iters: int = 4) -> Grouping:
    """Permutation grouping of S into `groups` diagonal blocks (see module docstring)."""
    S = S.float()
    m, n = S.shape
    if m % groups or n % groups:
        raise ValueError(f"group count {groups} must divide both dimensions {m} x {n}")
    best = identity_grouping(S, groups)
    if groups == 1:
        return best
    starts = [(best.rows, best.cols), (_sorted_start(S.sum(1), groups), _sorted_start(S.sum(0), groups))]
    for rows, cols in starts:
        score = float(block_scores(S, rows, cols, groups).sum())
        for _ in range(iters):
            rows = balanced_assign(S @ _onehot(cols, groups, S.dtype), rows)
            cols = balanced_assign(S.T @ _onehot(rows, groups, S.dtype), cols)
            new = float(block_scores(S, rows, cols, groups).sum())
            if new <= score * (1 + 1e-9):
                score = max(score, new)
                break
            score = new
        cand = Grouping(rows, cols, block_scores(S, rows, cols, groups))
        if cand.score > best.score:
            best = cand
    return best


def best_submatrix(
    S: torch.Tensor, n_rows: int, n_cols: int, iters: int = 8, rows0: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Row and column index sets (sorted) of size n_rows x n_cols with a large S[rows][:, cols].sum().

    Alternating exact maximisation (top rows given columns, top columns given rows) from the marginal
    top rows (or `rows0`)."""
    S = S.float()
    m, n = S.shape
    rows = rows0 if rows0 is not None else torch.topk(S.sum(1), n_rows).indices
    score, cols = -1.0, None
    rmask, cmask = torch.zeros(m), torch.zeros(n)
    for _ in range(iters):
        rmask.zero_()[rows] = 1.0
        cols = torch.topk(rmask @ S, n_cols).indices
        cmask.zero_()[cols] = 1.0
        row_scores = S @ cmask
        rows = torch.topk(row_scores, n_rows).indices
        new = float(row_scores[rows].double().sum())
        if new <= score * (1 + 1e-9):
            break
        score = new
    return torch.sort(rows).values, torch.sort(cols).values, score


def best_grid_block(S: torch.Tensor, n_rows: int, n_cols: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best contiguous (unpermuted) block of this shape on the grid: the 'no permutation' reference."""
    m, n = S.shape
    cells = (
        S.double()[: m - m % n_rows, : n - n % n_cols]
        .reshape(m // n_rows, n_rows, n // n_cols, n_cols)
        .sum((1, 3))
    )
    best = int(cells.argmax())
    i, j = divmod(best, cells.shape[1])
    return (
        torch.arange(i * n_rows, (i + 1) * n_rows),
        torch.arange(j * n_cols, (j + 1) * n_cols),
        float(cells.max()),
    )

"""Grouping, allocation and compensation as functions on tensors."""

import itertools

import numpy as np
import pytest
import torch

from pgbert.stages.allocation import (
    InfeasibleBudget,
    Option,
    allocate,
    blocks_to_mask,
    head_options,
    matrix_options,
    pair_options,
)
from pgbert.stages.compensation import LinearStats, solve_compensation, squared_error
from pgbert.stages.grouping import balanced_assign, best_submatrix, group, identity_grouping


def planted(m=48, n=32, G=4, seed=0):
    """A block-diagonal score matrix hidden behind random row/column permutations."""
    g = torch.Generator().manual_seed(seed)
    S = torch.rand(m, n, generator=g) * 0.01
    for b in range(G):
        S[b * m // G : (b + 1) * m // G, b * n // G : (b + 1) * n // G] += 1.0
    return S[torch.randperm(m, generator=g)][:, torch.randperm(n, generator=g)]


@pytest.mark.parametrize("G", [2, 4, 8])
def test_grouping_recovers_planted_blocks(G):
    S = planted(G=G)
    g = group(S, G)
    planted_score = 48 * 32 / G  # the hidden blocks hold ones
    assert g.score >= 0.999 * planted_score
    assert identity_grouping(S, G).score < 0.6 * planted_score
    assert all(int((g.rows == b).sum()) == 48 // G and int((g.cols == b).sum()) == 32 // G for b in range(G))


def test_grouping_never_below_identity_and_is_deterministic():
    torch.manual_seed(1)
    for G in (2, 3, 4, 6):
        S = torch.rand(24, 36) ** 4
        a, b = group(S, G), group(S, G)
        assert a.score >= identity_grouping(S, G).score - 1e-9
        assert torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols)


def test_balanced_assign_two_groups_is_exact():
    torch.manual_seed(0)
    A = torch.rand(8, 2)
    labels = balanced_assign(A, torch.zeros(8, dtype=torch.long))
    best = max(
        sum(float(A[i, 0 if i in c else 1]) for i in range(8)) for c in itertools.combinations(range(8), 4)
    )
    assert float(A.gather(1, labels[:, None]).sum()) == pytest.approx(best)


def test_best_submatrix_beats_any_grid_block():
    S = planted(G=4)
    rows, cols, score = best_submatrix(S, 12, 8)
    assert score == pytest.approx(float(S[rows][:, cols].sum()), rel=1e-5)
    assert score >= 0.99 * 96  # one planted block of 12 x 8 ones


def test_options_score_at_least_identity():
    torch.manual_seed(2)
    S = torch.rand(64, 32) ** 3
    for o in matrix_options(S):
        assert o.value >= o.identity_value - 1e-6, o.kind
        mask = blocks_to_mask(tuple(S.shape), o.blocks())
        assert int(mask.sum()) == o.cost
        assert float((S * mask).sum()) == pytest.approx(o.value, rel=1e-4)


def test_pair_options_size_neurons_in_sixteenths():
    """An FFN pair (256 neurons) offers every multiple of 1/16 of its neurons, each also at full hidden width
    (whole neurons, the structured case); masks match costs and values, never below no permutation."""
    torch.manual_seed(3)
    S_in, S_out = torch.rand(256, 64) ** 3, torch.rand(64, 256) ** 3
    opts = pair_options(S_in, S_out, 0, 1)
    subs = [(a, b) for a, b in opts if a.kind == "pair-submatrix"]
    assert {a.shape[0] for a, _ in subs} == set(range(16, 257, 16))
    whole = {a.shape[0] for a, b in subs if a.shape[1] == 64 and b.shape[0] == 64}
    assert whole == set(range(16, 256, 16))  # 256 at full width is the dense option
    for a, b in opts:
        for o, S in ((a, S_in), (b, S_out)):
            assert o.value >= o.identity_value - 1e-6
            mask = blocks_to_mask(tuple(S.shape), o.blocks())
            assert int(mask.sum()) == o.cost
            assert float((S * mask).sum()) == pytest.approx(o.value, rel=1e-4)
        if a.kind == "pair-submatrix":  # the same neurons on both sides
            assert torch.equal(a.blocks()[0][0], b.blocks()[0][1])


def brute_force(options, budget):
    """The exact optimum by enumeration (an oracle independent of the solver)."""
    best = -1.0
    for pick in itertools.product(*[range(len(o)) for o in options]):
        cost = sum(o[i].cost for o, i in zip(options, pick))
        if cost <= budget:
            best = max(best, sum(o[i].value for o, i in zip(options, pick)))
    return best


def opt(cost, value):
    return Option("x", int(cost), float(value), 0.0, 1, 1, list)


@pytest.mark.parametrize("with_empty", [True, False])
def test_allocation_is_optimal_and_within_budget(with_empty):
    """Random small multiple-choice knapsacks, with and without a zero-cost option per item: the choice
    never exceeds the budget and reaches the brute-force optimum (>= 0.99 of it; the solver is exact)."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        options = []
        for _ in range(rng.integers(2, 6)):
            costs = sorted(rng.choice(np.arange(1, 40), 4, replace=False))
            vals = np.cumsum(rng.random(4)) * rng.choice([1e-6, 1.0, 1e4])
            options.append(([opt(0, 0.0)] if with_empty else []) + [opt(c, v) for c, v in zip(costs, vals)])
        cheapest = sum(min(o.cost for o in opts) for opts in options)
        budget = int(rng.integers(cheapest, cheapest + 80))
        pick = allocate(options, budget)
        cost = sum(o[i].cost for o, i in zip(options, pick))
        value = sum(o[i].value for o, i in zip(options, pick))
        assert cost <= budget
        assert value >= 0.99 * brute_force(options, budget)


def test_allocation_without_a_free_option_stays_in_budget():
    """Three items of {(cost 10, value 0.1), (19, 19)}, budget 30: only the all-cheap choice fits (the old
    Lagrangian search returned cost 57). Below the cheapest choice the budget is refused."""
    options = [[opt(10, 0.1), opt(19, 19)] for _ in range(3)]
    assert allocate(options, 30) == [0, 0, 0]
    assert sorted(allocate(options, 39)) == [0, 0, 1]
    with pytest.raises(InfeasibleBudget, match="over the budget"):
        allocate(options, 29)


def test_compensation_recovers_exact_masked_target():
    torch.manual_seed(0)
    X = torch.randn(500, 16)
    W_true = torch.randn(8, 16)
    mask = torch.zeros(8, 16)
    mask[:4, :8] = 1
    mask[4:6, 8:] = 1  # rows 6, 7 keep nothing
    Y = X @ (W_true * mask).T + 0.5
    st = LinearStats(16, 8)
    st.add(X, Y)
    W0 = torch.randn(8, 16)  # a bad starting point
    W, b = solve_compensation(W0, torch.zeros(8), mask, st, damp=1e-6)
    assert torch.allclose(W[:6], (W_true * mask)[:6], atol=1e-3)
    assert bool((W[mask == 0] == 0).all())
    assert torch.allclose(b, torch.full((8,), 0.5), atol=1e-3)  # rows 6, 7: bias = mean target
    assert squared_error(W, b, st) < 1e-4 * squared_error(W0 * mask, torch.zeros(8), st)


def test_compensation_over_kept_columns_equals_the_full_solve():
    """compensate gathers statistics only over input columns some kept weight reads: the refit (same ridge
    weight) and its errors equal the solve over all columns."""
    torch.manual_seed(0)
    X, Y = torch.randn(400, 24), torch.randn(400, 6)
    mask = torch.zeros(6, 24)
    mask[:3, 2:9] = 1
    mask[3:5, 12:20] = 1  # columns 0-1, 9-11, 20-23 unread; row 5 keeps nothing
    W0, b0 = torch.randn(6, 24), torch.randn(6)
    full = LinearStats(24, 6)
    full.add(X, Y)
    lam = 0.01 * float(X.double().square().sum(0).mean())
    W_full, b_full = solve_compensation(W0, b0, mask, full, lam=lam)
    cols = torch.nonzero(mask.any(0))[:, 0]
    sub = LinearStats(cols.numel(), 6)
    sub.add(X[:, cols], Y)
    W_sub, b_sub = solve_compensation(W0[:, cols], b0, mask[:, cols], sub, lam=lam)
    assert torch.allclose(W_full[:, cols], W_sub, atol=1e-5) and torch.allclose(b_full, b_sub, atol=1e-5)
    assert float(W_full.abs().sum()) == pytest.approx(float(W_sub.abs().sum()), rel=1e-5)  # nothing outside
    assert squared_error(W_full, b_full, full) == pytest.approx(squared_error(W_sub, b_sub, sub), rel=1e-6)


def test_head_options_keep_whole_heads_by_importance():
    d, H, hd = 16, 4, 4
    shapes = [(H * hd, d)] * 3 + [(d, H * hd)]
    opts = head_options(shapes, torch.tensor([3.0, 1.0, 4.0, 2.0]))
    assert len(opts) == H + 1
    assert all(o.kind == "empty" and o.cost == 0 for o in opts[0])
    assert all(o.kind == "dense" for o in opts[H])
    two = opts[2]  # heads 2 and 0 (importance 4 and 3)
    assert sum(o.value for o in two) == pytest.approx(7.0)
    assert sum(o.cost for o in two) == 2 * 4 * d * hd
    q = blocks_to_mask(shapes[0], two[0].blocks())
    o = blocks_to_mask(shapes[3], two[3].blocks())
    kept = torch.tensor([1.0] * hd + [0.0] * hd + [1.0] * hd + [0.0] * hd)
    assert torch.equal(q, kept[:, None].expand(H * hd, d))
    assert torch.equal(o, kept[None, :].expand(d, H * hd))


def test_full_width_ffn_options_keep_every_hidden_dim(tokenizer):
    """free_widths=False (the full-width ablation): every FFN pair sub-matrix reads all hidden dims in FFN-in
    and writes all of them in FFN-out, so only neuron counts vary; the default offers narrower ones too."""
    from conftest import tiny_model

    from pgbert.adapters import prunable_names
    from pgbert.stages.allocation import OptionSpace, build_items
    from pgbert.stages.importance import head_importance, magnitude_scores

    model = tiny_model("bert", tokenizer)
    names = prunable_names(model)
    scores = magnitude_scores(model, [n for layer in names for n in layer])
    heads = head_importance(scores, names, 4)

    def ffn_widths(free_widths: bool) -> set:
        items = build_items(scores, names, OptionSpace(head_values=heads, free_widths=free_widths), 0.5)
        subs = [
            c.parts for item, cs in items if len(item) == 2 for c in cs if c.parts[0].kind == "pair-submatrix"
        ]
        assert subs
        return {(a.shape[1], b.shape[0]) for a, b in subs}

    hidden = model.config.hidden_size
    assert ffn_widths(False) == {(hidden, hidden)}
    assert len(ffn_widths(True)) > 1


def test_run_layer_stops_after_the_last_captured_input(tokenizer):
    """stop=True captures the same inputs as a full run of the layer and runs nothing after them."""
    from conftest import tiny_model

    from pgbert.adapters import adapter_for
    from pgbert.stages.compensation import layer_inputs, run_layer

    model = tiny_model("bert", tokenizer).eval()
    batch = tokenizer(["a good film", "a bad one, long and dull"], padding=True, return_tensors="pt")
    inputs = layer_inputs(model, [dict(batch)])
    layer = adapter_for(model.config).layers(model)[0]
    parts = adapter_for(model.config).parts(layer)
    capture = {"o": parts.linear("o"), "q": parts.linear("q")}
    nxt, full = run_layer(layer, inputs, capture, "input")
    calls = []
    hook = parts.linear("ffn_in").register_forward_hook(lambda *a: calls.append(1))
    try:
        none, early = run_layer(layer, inputs, capture, "input", stop=True)
    finally:
        hook.remove()
    assert none is None and len(nxt) == 1 and not calls  # FFN-in, after O, never ran
    assert all(torch.equal(full[k], early[k]) for k in capture)
    assert full["q"].shape[0] == int(batch["attention_mask"].sum())  # valid tokens only


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_token_wise_stage_inputs_equal_the_layer_forward(tokenizer, family):
    """Compensation runs the pruned layer only up to O's input (attention mixes tokens) and computes FFN-in's
    and FFN-out's inputs and the layer output token-wise from it: the same as a forward of the whole layer,
    on valid tokens."""
    from conftest import tiny_model
    from transformers.activations import ACT2FN

    from pgbert.adapters import adapter_for
    from pgbert.stages.compensation import _next_inputs, _stage_input, layer_inputs, run_layer

    model = tiny_model(family, tokenizer).eval()
    batch = tokenizer(["a good film", "a bad one, long and dull"], padding=True, return_tensors="pt")
    inputs = layer_inputs(model, [dict(batch)])
    adapter = adapter_for(model.config)
    layer = adapter.layers(model)[1]
    parts = adapter.parts(layer)
    nxt, full = run_layer(layer, inputs, {k: parts.linear(k) for k in ("o", "ffn_in", "ffn_out")}, "input")
    flow = {"q": torch.cat([x[m] for x, _, m in inputs])}
    for k in ("o", "ffn_in", "ffn_out"):
        flow[k] = _stage_input(layer, parts, ACT2FN[adapter.activation(model.config)], k, flow, inputs)
        torch.testing.assert_close(flow[k], full[k])
    (out, _, valid), (ref, _, _) = _next_inputs(parts, flow, inputs)[0], nxt[0]
    assert not valid.all()  # the batch has padding
    torch.testing.assert_close(out[valid], ref[valid])


def test_ffn_low_offers_a_few_neurons_and_the_knapsack_takes_them():
    """ffn_low adds 16, 32, 48 kept neurons below the first 1/16 step (64 of 1,024); on scores where only
    16 neurons matter and the budget fits every head plus those 16, the exact knapsack keeps exactly them and
    more score than the default options allow (which must give up a head or the whole FFN)."""
    from pgbert.stages.allocation import OptionSpace, allocate, build_items

    d, n = 64, 1024
    names = [["q", "k", "v", "o", "ffn_in", "ffn_out"]]
    scores = {m: torch.full((d, d), 1.0) for m in ("q", "k", "v", "o")}
    best = torch.arange(100, 1024, 57)[:16]  # the 16 neurons worth keeping, spread out
    scores["ffn_in"], scores["ffn_out"] = torch.full((n, d), 1e-6), torch.full((d, n), 1e-6)
    scores["ffn_in"][best], scores["ffn_out"][:, best] = 1.0, 1.0
    heads = [torch.full((4,), 1e3)]

    def knapsack(low: bool):
        items = build_items(scores, names, OptionSpace(head_values=heads, ffn_low=low), 0.0)
        ffn = next(cs for item, cs in items if item == ("ffn_in", "ffn_out"))
        counts = {c.parts[0].shape[0] for c in ffn if c.parts[0].kind == "pair-submatrix"}
        choices = [cs for _, cs in items]
        pick = allocate(choices, budget=4 * d * d + 16 * 2 * d)
        chosen = [cs[i] for cs, i in zip(choices, pick)]
        return counts, chosen, sum(c.value for c in chosen)

    counts, _, value = knapsack(False)
    counts_low, chosen, value_low = knapsack(True)
    assert min(counts) == 64 and counts_low == counts | {16, 32, 48}
    assert value_low > value
    ffn_in = chosen[1].parts[0]
    assert chosen[0].parts[0].kind == "dense" and ffn_in.shape == (16, d)
    assert torch.equal(ffn_in.blocks()[0][0], best)

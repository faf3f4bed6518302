"""Kwon et al.'s method, step by step against what their code does (tiny models, exact small cases)."""

import copy
import itertools

import numpy as np
import pytest
import torch
from conftest import hidden_error, sentiment_rows, tiny_model

from pgbert.adapters import MATRICES, prunable_names
from pgbert.config import PruneConfig
from pgbert.methods import kwon
from pgbert.methods.structured import unit_masks_to_weight_masks
from pgbert.pipeline import batches_of, calibrate
from pgbert.stages.importance import fisher_and_units
from pgbert.stages.structure import flops_ratio
from pgbert.tasks import TaskData, get_task
from pgbert.training import apply_masks


def data(n=200):
    ex = [{"text": r["text"], "text_pair": None, "label": r["label"]} for r in sentiment_rows(n)]
    return TaskData(get_task("sst2"), ex[: n - 50], {"dev": ex[n - 50 :]}, ["negative", "positive"], "synth")


def test_head_mask_fisher_matches_autograd(tokenizer):
    """Step 1: the head mask gradient (a mask scaling each head's context, as their head_mask does) equals
    pgbert's unit gradient from the weight gradients, batch by batch."""
    model = tiny_model("bert", tokenizer)
    d = data()
    batches = batches_of(d, d.train[:32], tokenizer, model, PruneConfig(sparsity=0.5, batch_size=16))
    _, units = fisher_and_units(model, batches, prunable_names(model), heads=4)
    o = model.bert.encoder.layer[1].attention.output.dense
    for b, batch in enumerate(batches):
        m = torch.ones(4, requires_grad=True)
        h = o.register_forward_pre_hook(lambda mod, a, m=m: (a[0] * m.repeat_interleave(16),))
        model(**batch).loss.backward()
        h.remove()
        torch.testing.assert_close(units[1]["head.batches"][b], m.grad, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(units[1]["head"], units[1]["head.batches"].square().sum(0))


def test_calibration_draw_is_theirs_and_check_is_disjoint(tokenizer):
    """Their draw: np.random.seed(seed); np.random.choice(len(train), num_samples) (with replacement).
    The held-out check examples are never among the drawn ones, for either draw."""
    d = data(400)
    model = tiny_model("bert", tokenizer)
    cfg = PruneConfig(sparsity=0.5, calib_samples=200, check_samples=64, seed=3)
    np.random.seed(3)
    idx = np.random.choice(len(d.train), 200)
    cal = calibrate(d, tokenizer, model, cfg, "with-replacement")
    assert cal.examples == [d.train[i] for i in idx]
    assert len(set(idx.tolist())) < 200  # with replacement: repeats
    for sampling in ("with-replacement", "shuffle"):
        cal = calibrate(d, tokenizer, model, cfg, sampling)
        drawn = {id(e) for e in cal.examples}
        check_ids = _check_examples(d, cal, tokenizer, model, cfg)
        assert check_ids and not drawn & check_ids, sampling


def _check_examples(d, cal, tokenizer, model, cfg):
    """The train examples whose batches make up cal.check (matched by their token ids)."""
    enc = {tuple(tokenizer(e["text"])["input_ids"]): id(e) for e in d.train}
    out = set()
    for b in cal.check:
        for row, m in zip(b["input_ids"], b["attention_mask"]):
            out.add(enc[tuple(row[m.bool()].tolist())])
    return out


def mac_of(heads, neurons, seq, d, hd):
    return heads * kwon.mac_per_head(seq, d, hd) + neurons * kwon.mac_per_neuron(seq, d)


def test_search_mac_equals_brute_force():
    """Step 2 on 2 layers x (3 heads, 4 neurons): the best keep set with at least one head whose MACs
    (their per-head and per-neuron costs, L^2 term included) fit the constraint, by enumeration."""
    g = torch.Generator().manual_seed(0)
    seq, d, hd = 7.5, 12, 4
    for trial in range(5):
        hf, nf = torch.rand(2, 3, generator=g), torch.rand(2, 4, generator=g) * 0.3
        dense_mac = mac_of(6, 8, seq, d, hd)
        for c in (0.3, 0.5, 0.8):
            heads, neurons = kwon.search_mac(hf, nf, c, seq, d, hd)
            got = float(hf[heads].sum() + nf[neurons].sum())
            assert mac_of(int(heads.sum()), int(neurons.sum()), seq, d, hd) <= c * dense_mac
            best = 0.0
            for bits in itertools.product([0, 1], repeat=14):
                h, n = torch.tensor(bits[:6]).bool(), torch.tensor(bits[6:]).bool()
                if h.any() and mac_of(int(h.sum()), int(n.sum()), seq, d, hd) <= c * dense_mac:
                    best = max(best, float(hf.flatten()[h].sum() + nf.flatten()[n].sum()))
            assert got == pytest.approx(best), (trial, c)


def test_search_mac_keeps_the_best_units_whatever_the_ties():
    """Head Fisher [3, 3] | [5, 3] with room for 2 heads: keep the 5 and one 3 (a threshold with per-layer
    caps kept both 3s of layer 0 and dropped the 5)."""
    hf = torch.tensor([[3.0, 3.0], [5.0, 3.0]])
    nf = torch.zeros(2, 1)
    # d = 4, head size 2, L = 1: a head costs 36 MACs, a neuron 8; dense 160; 0.5 -> 80 = 2 heads + 1 neuron
    heads, _ = kwon.search_mac(hf, nf, 0.5, 1.0, 4, 2)
    assert int(heads.sum()) == 2 and bool(heads[1, 0]) and float(hf[heads].sum()) == 8.0


def test_mac_cost_is_pgbert_flops_ratio(tokenizer):
    """Their MAC count of a head / neuron keep set equals pgbert's FLOPs ratio of the same weight masks."""
    model = tiny_model("bert", tokenizer)
    names = prunable_names(model)
    keep = [
        {"head": torch.tensor([1, 0, 1, 1]).bool(), "neuron": torch.arange(128) < 40},
        {"head": torch.tensor([0, 0, 1, 0]).bool(), "neuron": torch.arange(128) % 3 == 0},
    ]
    masks = unit_masks_to_weight_masks(model, names, keep)
    layers = [dict(zip(MATRICES, (masks[n] for n in layer))) for layer in names]
    for seq in (11, 128):
        kept = mac_of(4, 40 + 43, seq, 64, 16)
        assert flops_ratio(layers, 4, 64, seq)["flops_ratio"] == pytest.approx(
            kept / mac_of(8, 256, seq, 64, 16)
        )


def test_rearrangement_uses_gradient_correlations():
    """Step 3: units 0 and 1 look cheapest one by one, but their gradients add up; units 0 and 2 cancel."""
    g = torch.Generator().manual_seed(0)
    b = torch.randn(8, 1, generator=g)
    grads = torch.cat([b, 0.9 * b, -1.05 * b, 3 * torch.randn(8, 3, generator=g)], 1)  # 6 units
    keep = torch.ones(6, dtype=torch.bool)
    keep[torch.argsort(grads.square().sum(0))[:2]] = False  # the diagonal choice
    assert torch.equal(~keep, torch.tensor([True, True, False, False, False, False]))
    new = kwon.rearrange(keep, grads)
    assert torch.equal(~new, torch.tensor([True, False, True, False, False, False]))
    assert kwon.estimated_loss(new, grads) < 0.01 * kwon.estimated_loss(keep, grads)
    all_kept = torch.ones(6, dtype=torch.bool)
    assert torch.equal(kwon.rearrange(all_kept, grads), all_kept)


def test_lsmr_from_one_solves_near_one():
    """Their solver: LSMR with damping 1 on the change from 1; on a well-scaled system it is the solution."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(20, 5, generator=g, dtype=torch.float64) * 100
    x_true = torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0], dtype=torch.float64)
    ata, atb = A.T @ A, A.T @ (A @ x_true)
    x, ok = kwon.lsmr_from_one(ata, atb)
    assert ok and torch.allclose(x, x_true, atol=1e-3)
    x, ok = kwon.lsmr_from_one(torch.tensor([[4.0]]), torch.tensor([8.0]))
    assert ok and float(x[0]) == pytest.approx(2.0)


def test_attention_fit_has_an_offset_column():
    """The attention normal equations recover planted head scales and a constant offset exactly."""
    g = torch.Generator().manual_seed(1)
    t, d, hd = 300, 8, 4
    ctx, x, W, b = (torch.randn(*s, generator=g) for s in ((t, 3 * hd), (t, d), (d, 3 * hd), (d,)))
    m, c = torch.tensor([1.5, 0.0, -0.5]), 0.7
    target = sum(m[h] * ctx[:, h * hd : (h + 1) * hd] @ W[:, h * hd : (h + 1) * hd].T for h in range(3))
    target = target + b + x + c
    ata, atb = kwon.attention_lstsq(ctx, x, target, W, b, [0, 2], hd)  # head 1 is pruned (m = 0)
    sol = torch.linalg.solve(ata, atb)
    torch.testing.assert_close(sol.float(), torch.tensor([1.5, -0.5, 0.7]), atol=1e-4, rtol=1e-4)


def _setup(tokenizer, n=96):
    """A tiny BERT whose O and FFN-out weights are scaled up so the fits' normal equations (sums of
    squared outputs) dwarf LSMR's damping of 1, as they do at real sizes."""
    dense = tiny_model("bert", tokenizer)
    with torch.no_grad():
        for layer in dense.bert.encoder.layer:
            layer.attention.output.dense.weight *= 30
            layer.output.dense.weight *= 30
    d = data()
    batches = batches_of(d, d.train[:n], tokenizer, dense, PruneConfig(sparsity=0.5, batch_size=32))
    keep = [{"head": torch.ones(4).bool(), "neuron": torch.ones(128).bool()} for _ in range(2)]
    return dense, batches, keep


def _cols(model, li):
    layer = model.bert.encoder.layer[li]
    return layer.attention.output.dense.weight.detach().clone(), layer.output.dense.weight.detach().clone()


def test_mask_tuning_recovers_planted_scales(tokenizer):
    """Step 4 with teacher = student masks (all kept): the student's layer-1 head 0 and FFN scaled by 0.5
    are tuned back to the teacher (scale 2)."""
    dense, batches, keep = _setup(tokenizer)
    student = copy.deepcopy(dense)
    with torch.no_grad():
        student.bert.encoder.layer[1].attention.output.dense.weight[:, :16] *= 0.5
        student.bert.encoder.layer[1].output.dense.weight[:, :] *= 0.5
    before = hidden_error(student, dense, batches)
    rep = kwon.rescale(dense, student, keep, keep, batches, cls_only=False)
    assert rep["stopped_at"] is None and rep["tuned"] == ["layer0.ffn", "layer1.attention", "layer1.ffn"]
    torch.testing.assert_close(_cols(student, 1)[0], _cols(dense, 1)[0], rtol=2e-3, atol=1e-4)
    # 128 neuron scales from ~800 tokens: LSMR's damping leaves some columns a few % off; the output is close
    assert hidden_error(student, dense, batches) < 0.01 * before


def test_mask_tuning_leaves_layer0_heads(tokenizer):
    """Layer 0's heads are never tuned (their code skips layer_idx 0), even when they are off."""
    dense, batches, keep = _setup(tokenizer)
    student = copy.deepcopy(dense)
    with torch.no_grad():
        student.bert.encoder.layer[0].attention.output.dense.weight[:, :16] *= 0.5
    before = _cols(student, 0)[0]
    kwon.rescale(dense, student, keep, keep, batches, cls_only=False)
    assert torch.equal(_cols(student, 0)[0], before)


def test_mask_tuning_stops_at_a_scale_over_ten(tokenizer):
    """A needed scale of 20 (> 10) stops tuning at that layer: its FFN and later layers stay as they are."""
    dense, batches, keep = _setup(tokenizer)
    student = copy.deepcopy(dense)
    with torch.no_grad():
        student.bert.encoder.layer[1].attention.output.dense.weight[:, :16] *= 0.05
        student.bert.encoder.layer[1].output.dense.weight[:, :] *= 0.5
    before = _cols(student, 1)
    rep = kwon.rescale(dense, student, keep, keep, batches, cls_only=False)
    assert rep["stopped_at"] == "layer1.attention" and "outside" in rep["reason"]
    assert all(torch.equal(a, b) for a, b in zip(before, _cols(student, 1)))


def test_mask_tuning_fits_cls_only_in_the_last_ffn(tokenizer, monkeypatch):
    """For sequence tasks the last layer's FFN fit sees one token per sequence; other layers all tokens."""
    dense, batches, keep = _setup(tokenizer, n=64)
    seen = []
    real = kwon.ffn_lstsq
    monkeypatch.setattr(kwon, "ffn_lstsq", lambda a, *r: seen.append(a.shape[0]) or real(a, *r))
    kwon.rescale(dense, copy.deepcopy(dense), keep, keep, batches, cls_only=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert seen == [tokens, 64]


def test_kwon_method_end_to_end_meets_the_mac_budget(tokenizer):
    """select() at constraint c keeps MACs <= c at the dev length, and its teacher is the sqrt(c) search."""
    from pgbert.methods import get_method

    dense = tiny_model("bert", tokenizer)
    d = data()
    cfg = PruneConfig(flops_ratio=0.4, method="kwon", calib_samples=64, batch_size=32, quiet=True)
    cal = calibrate(d, tokenizer, dense, cfg, "with-replacement")
    m = get_method("kwon")
    units = m.importance(dense, cal, cfg)
    sel = m.select(dense, units, cal, cfg)
    names = prunable_names(dense)
    layers = [dict(zip(MATRICES, (sel.masks[n] for n in layer))) for layer in names]
    assert flops_ratio(layers, 4, 64, cal.dev_seq_len)["flops_ratio"] <= 0.4
    t_masks = unit_masks_to_weight_masks(dense, names, sel.info["teacher_keep"])
    t_layers = [dict(zip(MATRICES, (t_masks[n] for n in layer))) for layer in names]
    fr_t = flops_ratio(t_layers, 4, 64, cal.dev_seq_len)["flops_ratio"]
    assert 0.4 < fr_t <= 0.4**0.5
    pruned = copy.deepcopy(dense)
    apply_masks(pruned, sel.masks)
    rep = m.update(dense, pruned, sel, units, cal, cfg)
    assert rep["tuned"]

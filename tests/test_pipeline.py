"""PGB end to end on tiny random models of every family and task type."""

import dataclasses
import json

import pytest
import torch
from conftest import FAMILIES, fast_config, hidden_error, sentiment_rows, squad_json, tiny_model

from pgbert import api
from pgbert.adapters import MATRICES, prunable_names
from pgbert.errors import PgbertError
from pgbert.pipeline import batches_of, calibrate, prune_model
from pgbert.stages.allocation import OptionSpace, choose_masks, drop_stands
from pgbert.stages.compensation import example_losses, task_loss
from pgbert.tasks import DataOptions, TaskData, get_task, load_task
from pgbert.tasks.features import collator_for, encode_examples


def sentiment(n=200):
    ex = [{"text": r["text"], "text_pair": None, "label": r["label"]} for r in sentiment_rows(n)]
    return TaskData(get_task("sst2"), ex[:150], {"dev": ex[150:]}, ["negative", "positive"], "synthetic")


def fast(sparsity, **kw):
    return fast_config(**{"sparsity": sparsity, "calib_samples": 96, "compensation_samples": 64, **kw})


def batch_for(model, tokenizer, data):
    feats = encode_examples(data.dev["dev"][:8], tokenizer, data.spec.kind)
    return collator_for(tokenizer, model)([{k: v for k, v in f.items() if k != "labels"} for f in feats])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.88])
def test_sparsity_masks_and_permutation(tokenizer, family, sparsity):
    data = sentiment()
    dense = tiny_model(family, tokenizer)
    pruned, masks, rep = prune_model(dense, tokenizer, data, fast(sparsity, compensate=False))
    # Never over budget; under it by at most the knapsack's step, which is coarse on these tiny models (one
    # head is 6% of the weights, the FFN pair's smallest step 1.6%). Real sizes: test_budget_met_at_minilm_size.
    assert 0 <= rep["sparsity_achieved"] - sparsity <= 0.02
    # the pruned model is "dense weights times 0/1 masks", parameter by parameter, nothing else changed
    prunable = set(masks)
    dense_params = dict(dense.named_parameters())
    for n, p in pruned.named_parameters():
        if n in prunable:
            assert set(masks[n].unique().tolist()) <= {0.0, 1.0}
            assert torch.equal(p, dense_params[n] * masks[n]), n
        else:
            assert torch.equal(p, dense_params[n]), n
    kept = sum(int(m.sum()) for m in masks.values())
    assert rep["params_kept"] == kept == sum(int((pruned.get_parameter(n) != 0).sum()) for n in masks)
    batch = batch_for(dense, tokenizer, data)
    with torch.no_grad():
        assert not torch.allclose(dense(**batch).logits, pruned(**batch).logits)
    for m in rep["matrices"]:
        assert m["score_kept_fraction"] >= m["score_kept_fraction_identity"] * (1 - 1e-6)
    # attention keeps whole heads: Q/K/V rows (and O columns) are all-or-nothing per head, full width
    heads = dense.config.num_attention_heads if family != "distilbert" else dense.config.n_heads
    for layer in range(len(rep["layers"])):
        qkv = [masks[m["name"]] for m in rep["matrices"][6 * layer : 6 * layer + 3]]
        o = masks[rep["matrices"][6 * layer + 3]["name"]]
        per_head = qkv[0].view(heads, -1)
        assert torch.equal(per_head.amin(1), per_head.amax(1))
        ffn_in, ffn_out = (masks[rep["matrices"][6 * layer + i]["name"]] for i in (4, 5))
        neurons = int((ffn_in.any(1) & ffn_out.any(0)).sum())  # live in both FFN matrices
        assert rep["layout"][layer].startswith(f"h{int(per_head.amax(1).sum())} f{neurons}x")
        assert all(torch.equal(m, qkv[0]) for m in qkv[1:]) and torch.equal(
            o, qkv[0][:, 0][None, :].expand_as(o)
        )
    gain = rep["permutation_gain"]
    assert gain["mean_score_kept_fraction"] > gain["mean_score_kept_fraction_identity"]
    assert 0 < rep["flops_ratio"] < 1
    assert {"importance", "grouping_allocation", "compensation", "finetune"} <= set(rep["timings_s"])


def test_a_small_train_split_keeps_check_examples_out_of_the_draw(tokenizer):
    """A split smaller than the draw plus check_samples holds out check_samples or a quarter of itself,
    whichever is fewer (never leaving under 32 to draw), so the guards score examples compensation never
    fitted; a split large enough draws exactly calib_samples."""
    dense = tiny_model("bert", tokenizer)

    def sizes(data, **kw):
        cal = calibrate(data, tokenizer, dense, fast(0.5, **kw), "shuffle")
        return len(cal.examples), cal.check_examples

    data = sentiment()  # 150 training examples
    assert sizes(data, calib_samples=96, check_samples=32) == (96, 32)
    assert sizes(data, calib_samples=2048, check_samples=32) == (118, 32)
    assert sizes(data, calib_samples=2048, check_samples=256) == (113, 37)
    small = dataclasses.replace(data, train=data.train[:40])
    assert sizes(small, calib_samples=2048, check_samples=32) == (32, 8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compensation_lowers_error_and_never_raises_check_loss(tokenizer, seed):
    """Measured on the model, not read from the report: compensation brings the encoder output closer to
    the dense model's on held-out check batches, and the guard never leaves the check loss above the
    uncompensated (masked) model's."""
    data = sentiment(400)
    dense = tiny_model("bert", tokenizer, layers=3, seed=seed)
    cfg = fast(
        0.75, calib_samples=256, compensation_samples=192, check_samples=64, seed=seed, drop_check=False
    )
    comp, masks, rep = prune_model(dense, tokenizer, data, cfg)
    masked, masks2, _ = prune_model(  # the drop check measures what the run does: off, for the same masks
        dense,
        tokenizer,
        data,
        fast(0.75, calib_samples=256, check_samples=64, compensate=False, seed=seed, drop_check=False),
    )
    assert all(torch.equal(masks[n], masks2[n]) for n in masks)
    check = calibrate(data, tokenizer, dense, cfg, "shuffle").check
    assert task_loss(comp, check) <= task_loss(masked, check) + 1e-6
    kept = rep["compensation"]["_check_loss"]["compensated_layers"]
    if kept:
        assert hidden_error(comp, dense, check) < hidden_error(masked, dense, check)
    else:
        assert all(torch.equal(a, b) for a, b in zip(comp.parameters(), masked.parameters()))
    entries = {k: v for k, v in rep["compensation"].items() if not k.startswith("_")}
    assert len(entries) == 18 and any(v["compensated"] for v in entries.values()) == (kept > 0)


def test_identity_grouping_ablation_and_magnitude(tokenizer):
    data = sentiment()
    dense = tiny_model("bert", tokenizer)
    # attention="blocks": every matrix is grouped (with whole heads, permutation acts on the FFN only)
    kw = dict(importance="magnitude", compensate=False, attention="blocks")
    _, _, perm = prune_model(dense, tokenizer, data, fast(0.75, **kw))
    _, _, ident = prune_model(dense, tokenizer, data, fast(0.75, method="pgb-identity", **kw))
    assert ident["method"] == "pgb-identity"
    assert (
        perm["permutation_gain"]["mean_score_kept_fraction"]
        > ident["permutation_gain"]["mean_score_kept_fraction"]
    )


def test_regression_and_qa_tasks(tokenizer, tmp_path):
    rows = sentiment_rows(150)
    reg = TaskData(
        get_task("stsb"),
        [{"text": r["text"], "text_pair": "x", "label": 4.0 * r["label"]} for r in rows],
        {"dev": [{"text": r["text"], "text_pair": "x", "label": 4.0 * r["label"]} for r in rows[:30]]},
        None,
        "s",
    )
    m = tiny_model("roberta", tokenizer, num_labels=1)
    m.config.problem_type = "regression"
    _, _, rep = prune_model(m, tokenizer, reg, fast(0.5, finetune_epochs=0.2))
    assert "pearson" in rep["metrics"]["finetuned"]
    (tmp_path / "tr.json").write_text(json.dumps(squad_json(80)))
    data = load_task(
        "squad", DataOptions(train_file=str(tmp_path / "tr.json"), dev_file=str(tmp_path / "tr.json"))
    )
    _, _, rep = prune_model(
        tiny_model("distilbert", tokenizer, qa=True),
        tokenizer,
        data,
        fast(0.5, calib_samples=64, check_samples=16),  # 80 examples: 64 drawn, 16 held out
    )
    assert abs(rep["sparsity_achieved"] - 0.5) <= 0.005 and "f1" in rep["metrics"]["pruned"]


def test_bad_input(tokenizer, save_tiny, tmp_path):
    data = sentiment()
    with pytest.raises(PgbertError, match="sparsity must be in"):
        prune_model(tiny_model("bert", tokenizer), tokenizer, data, fast(1.0))
    with pytest.raises(PgbertError, match="--attention must be heads or blocks"):
        prune_model(tiny_model("bert", tokenizer), tokenizer, data, fast(0.5, attention="rows"))
    with pytest.raises(PgbertError, match="--compensation-samples must be at least 1"):
        prune_model(tiny_model("bert", tokenizer), tokenizer, data, fast(0.5, compensation_samples=0))
    small = TaskData(data.spec, data.train[:10], data.dev, data.label_names, "tiny")
    with pytest.raises(PgbertError, match="only 10 examples"):
        prune_model(tiny_model("bert", tokenizer), tokenizer, small, fast(0.5))
    path = save_tiny("bert", num_labels=3)
    out = tmp_path / "out"
    with pytest.raises(PgbertError, match="not fine-tuned for this task"):
        api.prune(path, "sst2", 0.5, out, data, fast(0.5))
    assert not out.exists()
    broken = tiny_model("bert", tokenizer)
    with torch.no_grad():
        broken.bert.encoder.layer[0].intermediate.dense.weight[0, 0] = float("nan")
    with pytest.raises(PgbertError, match="NaN"):
        prune_model(broken, tokenizer, data, fast(0.5))


@pytest.mark.slow
def test_budget_met_at_minilm_size():
    """The knapsack meets the budget to within 0.005 at the MiniLM's shapes (random scores, no model)."""
    torch.manual_seed(0)
    shapes = dict(
        q=(384, 384), k=(384, 384), v=(384, 384), o=(384, 384), ffn_in=(1536, 384), ffn_out=(384, 1536)
    )
    names = [[f"layer{i}.{m}" for m in MATRICES] for i in range(6)]
    scores = {n: torch.rand(shapes[m]) ** 4 for layer in names for m, n in zip(MATRICES, layer)}
    heads = [torch.rand(12) * 30 for _ in names]
    total = sum(s.numel() for s in scores.values())
    for sparsity in (0.75, 0.88):
        _, masks, _ = choose_masks(scores, names, OptionSpace(head_values=heads), sparsity)
        assert 0 <= 1 - sum(float(m.sum()) for m in masks.values()) / total - sparsity <= 0.005


def test_fixed_groups_ablation_keeps_k_of_g_blocks():
    """fixed_groups=G: every matrix keeps k = (1-s) G^2 (at most G) of its G permuted blocks, so density 1-s
    where a G-grouping can hold it (the no-allocation ablation); a G that does not divide the matrices is a
    one-line error."""
    torch.manual_seed(0)
    shapes = dict(zip(MATRICES, [(32, 32)] * 4 + [(64, 32), (32, 64)]))
    names = [[f"l{i}.{k}" for k in MATRICES] for i in range(2)]
    scores = {n: torch.rand(shapes[n.split(".")[1]]) for layer in names for n in layer}
    for s, G, density in ((0.875, 8, 1 / 8), (0.95, 8, 3 / 64), (0.5, 8, 1 / 8), (0.5, 2, 1 / 2)):
        _, masks, _ = choose_masks(scores, names, OptionSpace(fixed_groups=G), s)  # 8: not a default G
        for n, m in masks.items():
            assert float(m.mean()) == pytest.approx(density), (s, G, n)  # 0.5 with G=8: at most 1/8
            assert set(m.sum(1).unique().tolist()) <= {0.0, m.shape[1] / G}  # a kept row reads one block
    with pytest.raises(PgbertError, match="fixed_groups=5"):
        choose_masks(scores, names, OptionSpace(fixed_groups=5), 0.5)


def tiny_ffn_drop():
    """Scores for two layers whose layer-1 FFN scores are tiny, so the knapsack at 0.5 drops that FFN."""
    torch.manual_seed(0)
    shapes = dict(zip(MATRICES, [(32, 32)] * 4 + [(64, 32), (32, 64)]))
    names = [[f"l{i}.{k}" for k in MATRICES] for i in range(2)]
    scores = {n: torch.rand(shapes[n.split(".")[1]]) for layer in names for n in layer}
    for n in names[1][4:]:
        scores[n] *= 1e-4
    return scores, names, OptionSpace(head_values=[torch.rand(4) * 100 for _ in names])


def test_drop_check_keeps_a_sublayer_only_when_measured_better():
    """The knapsack drops layer 1's FFN (its scores are tiny); the drop check re-solves with that FFN kept
    and takes whichever allocation the measure prefers, recording both losses."""
    scores, names, space = tiny_ffn_drop()
    chosen, plain, checks = choose_masks(scores, names, space, 0.5)
    assert checks == [] and float(plain["l1.ffn_in"].sum()) == 0  # no measure: the knapsack's drop
    kept_ffn = lambda m: float(m["l1.ffn_in"].sum() + m["l1.ffn_out"].sum()) > 0  # noqa: E731
    calls = []

    def prefers_kept(m):
        calls.append(m)
        return 1.0 if kept_ffn(m) else 2.0

    _, masks, checks = choose_masks(scores, names, space, 0.5, prefers_kept)
    assert kept_ffn(masks) and [c["sublayer"] for c in checks] == ["layer1.ffn"]
    assert (checks[0]["loss_dropped"], checks[0]["loss_kept"]) == (2.0, 1.0) and len(calls) == 2
    assert checks[0]["dropped"] is False
    total = sum(s.numel() for s in scores.values())
    assert sum(float(m.sum()) for m in masks.values()) <= 0.5 * total  # the budget still holds
    _, masks, checks = choose_masks(scores, names, space, 0.5, lambda m: 1.0 if not kept_ffn(m) else 2.0)
    assert all(torch.equal(masks[n], plain[n]) for n in plain) and len(checks) == 1


def test_a_drop_stands_only_when_its_gain_exceeds_its_standard_error():
    """Per-example losses, paired: dropping gains 0.1 on average. With a spread whose standard error is 0.1
    (d = -0.1 +- 1, n = 100) the drop stands at 0 and 1 standard errors and not at 2; with no spread it
    stands at any margin. The check re-solves the allocation when the drop does not stand."""
    kept = torch.full((100,), 1.0, dtype=torch.float64)
    noise = torch.tensor([1.0, -1.0] * 50, dtype=torch.float64) * (100 / 99) ** -0.5  # sample std exactly 1
    dropped = kept - 0.1 + noise
    for se, stands in ((0.0, True), (0.99, True), (1.01, False), (2.0, False)):
        verdict, diff, err = drop_stands(dropped, kept, se)
        assert verdict is stands and diff == pytest.approx(-0.1) and err == pytest.approx(0.1), se
    assert drop_stands(kept - 0.1, kept, 100.0)[0] is True
    assert drop_stands(2.0, 1.0, 0.0) == (False, 1.0, 0.0)  # scalar losses: no standard error

    scores, names, space = tiny_ffn_drop()
    kept_ffn = lambda m: float(m["l1.ffn_in"].sum()) > 0  # noqa: E731
    noisy_gain = lambda m: kept if kept_ffn(m) else dropped  # noqa: E731
    _, masks, checks = choose_masks(scores, names, space, 0.5, noisy_gain, drop_se=2.0)
    assert kept_ffn(masks) and checks[0]["dropped"] is False
    assert checks[0]["difference_se"] == pytest.approx(0.1)
    _, masks, checks = choose_masks(scores, names, space, 0.5, noisy_gain, drop_se=0.0)
    assert not kept_ffn(masks) and checks[0]["dropped"] is True


def chain_of_drops(monkeypatch):
    """A knapsack (faked) that drops layer 1's FFN; told to keep it, layer 0's attention; told to keep
    both, nothing. Returns the scores and names to pass to choose_masks."""
    from pgbert.stages import allocation
    from pgbert.stages.allocation import Option

    names = [[f"l{i}.{k}" for k in MATRICES] for i in range(2)]
    scores = {n: torch.ones(4, 4) for layer in names for n in layer}
    full = (torch.arange(4), torch.arange(4))
    dense = Option("dense", 16, 1.0, 1.0, 1, 1, lambda: [full], (4, 4))
    empty = Option("empty", 0, 0.0, 0.0, 1, 0, lambda: [], (0, 0))
    att0, ffn1 = set(names[0][:4]), set(names[1][4:])

    def fake_choose(scores, names, space, sparsity, keep=frozenset(), items=None, ms_budget=None):
        drop = att0 if ffn1 <= keep and not att0 <= keep else set() if ffn1 <= keep else ffn1
        return {n: empty if n in drop else dense for layer in names for n in layer}

    monkeypatch.setattr(allocation, "build_items", lambda *a: [])
    monkeypatch.setattr(allocation, "choose_options", fake_choose)
    return scores, names


def test_drop_check_also_checks_what_the_kept_allocation_drops(monkeypatch):
    """Keeping layer 1's FFN makes the knapsack drop layer 0's attention instead: that new drop is checked
    too (and kept, as the measure prefers), so the result drops nothing unchecked."""
    scores, names = chain_of_drops(monkeypatch)

    def loss(m):  # losing layer 1's FFN costs 2, layer 0's attention 1
        return 2.0 * (float(m["l1.ffn_in"].sum()) == 0) + (float(m["l0.q"].sum()) == 0)

    _, masks, checks = choose_masks(scores, names, OptionSpace(), 0.5, loss, drop_se=0.0)
    assert [c["sublayer"] for c in checks] == ["layer1.ffn", "layer0.attention"]
    assert all(float(m.sum()) == 16 for m in masks.values())


def test_drop_check_best_ends_on_the_best_allocation_it_measured(monkeypatch):
    """Per-example losses (n = 100, e a +-1 pattern of sample std 1): dropping layer 1's FFN 1.75 flat,
    dropping layer 0's attention instead 1.85 + e, dropping nothing 2.0 flat. Each neighbour's gain is under
    two standard errors (0.1 +- 0.1, 0.15 +- 0.1), so the chain keeps both and ends on the worst of the
    three; the first beats that end by 0.25 with no spread, so drop_check_best ends there. With the first
    at 1.75 + 2e (0.25 +- 0.2 below the end) it does not."""
    scores, names = chain_of_drops(monkeypatch)
    e = torch.tensor([1.0, -1.0] * 50, dtype=torch.float64) * (100 / 99) ** -0.5
    flat = torch.ones(100, dtype=torch.float64)

    def losses(spread):
        def loss(m):
            if float(m["l1.ffn_in"].sum()) == 0:
                return 1.75 * flat + spread * e
            return 1.85 + e if float(m["l0.q"].sum()) == 0 else 2.0 * flat

        return loss

    _, masks, checks = choose_masks(scores, names, OptionSpace(), 0.5, losses(0.0), drop_se=2.0)
    assert all(float(m.sum()) == 16 for m in masks.values()) and len(checks) == 2  # the chain's end
    _, masks, checks = choose_masks(scores, names, OptionSpace(), 0.5, losses(0.0), drop_se=2.0, best=True)
    assert sorted(n for n, m in masks.items() if float(m.sum()) == 0) == ["l1.ffn_in", "l1.ffn_out"]
    last = checks[-1]
    assert (last["sublayer"], last["dropped"], last["drops"]) == ("best", True, ["layer1.ffn"])
    assert (last["loss_dropped"], last["loss_kept"], last["difference_se"]) == pytest.approx((1.75, 2.0, 0.0))
    _, masks, checks = choose_masks(scores, names, OptionSpace(), 0.5, losses(2.0), drop_se=2.0, best=True)
    assert all(float(m.sum()) == 16 for m in masks.values()) and checks[-1]["dropped"] is False
    assert checks[-1]["difference_se"] == pytest.approx(0.2)


def test_example_losses_average_to_the_models_own_loss(tokenizer, tmp_path):
    """Classification, regression and extractive QA: the per-example losses' mean is the mean of the model's
    own (batch-mean) loss, the measure the compensation guard uses."""
    cls = tiny_model("bert", tokenizer)
    d = sentiment()
    reg = tiny_model("roberta", tokenizer, num_labels=1)
    reg.config.problem_type = "regression"
    rd = TaskData(
        get_task("stsb"),
        [{"text": e["text"], "text_pair": "x", "label": 4.0 * e["label"]} for e in d.train],
        {},
        None,
        "s",
    )
    (tmp_path / "tr.json").write_text(json.dumps(squad_json(24)))
    qd = load_task(
        "squad", DataOptions(train_file=str(tmp_path / "tr.json"), dev_file=str(tmp_path / "tr.json"))
    )
    qa = tiny_model("distilbert", tokenizer, qa=True)
    cfg = fast_config(sparsity=0.5, batch_size=8)
    for model, data in ((cls, d), (reg, rd), (qa, qd)):
        batches = batches_of(data, data.train[:24], tokenizer, model, cfg)
        losses = example_losses(model, batches)
        assert losses.shape == (24,) and float(losses.min()) >= 0
        assert float(losses.mean()) == pytest.approx(task_loss(model, batches), rel=1e-5)


def test_importance_steps_rescore_the_partly_pruned_model(tokenizer):
    """T = 2: one intermediate step at the geometric midpoint of the kept fraction; the model it scores
    again gives its pruned weights (and heads) no importance, so the final knapsack sees them as free to
    drop; the budget still holds."""
    from pgbert.methods import get_method
    from pgbert.training import apply_masks

    data, dense, s = sentiment(), tiny_model("bert", tokenizer), 0.75
    pruned, masks, rep = prune_model(dense, tokenizer, data, fast(s, importance_steps=2))
    assert [st["sparsity"] for st in rep["importance_steps"]] == [pytest.approx(1 - 0.25**0.5)]
    assert 0 <= rep["sparsity_achieved"] - s <= 0.02
    method, cfg = get_method("pgb"), fast(0.5)
    calib = calibrate(data, tokenizer, dense, cfg, "shuffle")
    sel = method.select(dense, method.importance(dense, calib, cfg), calib, cfg)
    partial = __import__("copy").deepcopy(dense)
    apply_masks(partial, sel.masks)
    weights, heads = method.importance(partial, calib, cfg)
    assert all(float(weights[n][sel.masks[n] == 0].abs().max()) == 0 for n in sel.masks)
    for layer, h in zip(prunable_names(dense), heads):
        kept = sel.masks[layer[2]].view(4, -1).sum(1) > 0  # V rows per head
        assert not kept.all() and float(h[~kept].abs().max()) == 0 and float(h[kept].min()) > 0


def test_residual_target_fits_what_enters_the_layernorm(tokenizer):
    """compensation_target "residual": FFN-out fits dense output + residual error, so the sum entering the
    FFN's LayerNorm (measured by a hook) is closer to the dense one than with each linear's own output.
    Fit and check on the same batches and a loss that keeps every layer, so no guard intervenes."""
    import copy

    from pgbert.stages.compensation import compensate
    from pgbert.training import apply_masks

    data, dense = sentiment(), tiny_model("bert", tokenizer)
    cfg = fast(0.75)
    calib = calibrate(data, tokenizer, dense, cfg, "shuffle")
    _, masks, _ = prune_model(dense, tokenizer, data, fast(0.75, compensate=False, drop_check=False))

    def ln_inputs(model):
        got = []
        ln = model.bert.encoder.layer[0].output.LayerNorm
        h = ln.register_forward_pre_hook(lambda m, a: got.append(a[0][b["attention_mask"].bool()]))
        with torch.no_grad():
            for b in calib.fit:
                model(**b)
        h.remove()
        return torch.cat(got)

    ref, errors = ln_inputs(dense), {}
    for target in ("linear", "residual"):
        pruned = copy.deepcopy(dense)
        apply_masks(pruned, masks)
        compensate(dense, pruned, masks, calib.fit, calib.fit, lambda m, b: 0.0, damp=1e-6, target=target)
        errors[target] = float((ln_inputs(pruned) - ref).square().sum())
    assert errors["residual"] < errors["linear"]


def test_compensation_damp_reaches_the_refit(tokenizer, monkeypatch):
    """--compensation-damp is the ridge weight toward the dense weights: a huge one leaves every kept weight
    at its dense value; the default moves them. (A flat task loss, so the prefix guard keeps every layer.)"""
    monkeypatch.setattr("pgbert.methods.base.task_loss", lambda model, batches: 0.0)
    data, dense = sentiment(), tiny_model("bert", tokenizer)
    moved = {}
    for damp in (1e-2, 1e9):
        pruned, masks, _ = prune_model(
            dense, tokenizer, data, fast(0.75, drop_check=False, compensation_damp=damp)
        )
        dw = dict(dense.named_parameters())
        moved[damp] = max(
            float((p - dw[n] * masks[n]).detach().abs().max())
            for n, p in pruned.named_parameters()
            if n in masks
        )
    assert moved[1e9] < 1e-5 < 1e-3 < moved[1e-2], moved


def test_compensation_without_check_refits_every_layer(tokenizer):
    """check=None (the drop check's quick measure): no held-out guard, every layer keeps its refit, and
    the refit lowers the error on the fit tokens of every linear that keeps weights."""
    import copy

    from pgbert.stages.compensation import compensate
    from pgbert.training import apply_masks

    data, dense = sentiment(), tiny_model("bert", tokenizer)
    calib = calibrate(data, tokenizer, dense, fast(0.75), "shuffle")
    _, masks, _ = prune_model(dense, tokenizer, data, fast(0.75, compensate=False, drop_check=False))
    pruned = copy.deepcopy(dense)
    apply_masks(pruned, masks)
    rep = compensate(dense, pruned, masks, calib.fit, None, task_loss, target="linear")
    assert rep["_check_loss"] == {"prefix_losses": [], "compensated_layers": 2}
    kept = [v for n, v in rep.items() if not n.startswith("_") and float(masks[n].sum()) > 0]
    assert kept and all(v["compensated"] and v["error_after"] < v["error_before"] for v in kept)


@pytest.mark.parametrize("family,tokens", [("bert", "all"), ("distilbert", "all"), ("bert", "head")])
def test_compensation_is_each_linears_least_squares_on_the_compensated_models_inputs(
    tokenizer, family, tokens
):
    """Layer by layer in forward order, every kept row of every linear holds the ridge least-squares fit
    (toward its dense weights) of the dense linear's output, over the row's kept columns and a bias, on that
    linear's inputs in the compensated model (valid tokens; with tokens="head", the last layer's Q, O,
    FFN-in and FFN-out on each sequence's first token only); rows that keep nothing hold the mean target.
    Masks and tokens are random (Q, K and V keep different columns), solved here in float64."""
    import copy

    from pgbert.stages.compensation import HEAD_READ, compensate
    from pgbert.training import apply_masks

    dense = tiny_model(family, tokenizer)
    g = torch.Generator().manual_seed(0)
    fit = []
    for _ in range(8):  # padded batches of random tokens
        valid = (torch.arange(16) < torch.randint(4, 17, (8, 1), generator=g)).long()
        fit.append(
            {
                "input_ids": torch.randint(5, len(tokenizer), (8, 16), generator=g) * valid,
                "attention_mask": valid,
            }
        )
    masks = {}
    for layer in prunable_names(dense):
        rows = {}
        for k, n in zip(MATRICES, layer):
            n_out, n_in = dense.get_parameter(n).shape
            rows[k] = torch.rand(n_out, generator=g) < 0.8
            cols = torch.rand(n_in, generator=g) < 0.5
            # O and FFN-out read only what V and FFN-in kept (a dropped row's output is constant, a column
            # collinear with the bias), as PGB's paired masks do
            cols &= rows.get({"o": "v", "ffn_out": "ffn_in"}.get(k), torch.ones(n_in, dtype=torch.bool))
            masks[n] = (rows[k][:, None] & cols[None]).float()
    pruned = copy.deepcopy(dense)
    apply_masks(pruned, masks)
    compensate(dense, pruned, masks, fit, None, task_loss, target="linear", damp=1e-2, tokens=tokens)

    def capture(model, what):
        got, tok, hooks = {n: [] for n in masks}, {}, []
        for n in masks:

            def hook(m, a, o, n=n):
                got[n].append((a[0] if what == "input" else o)[tok["valid"]].double())

            hooks.append(model.get_submodule(n.removesuffix(".weight")).register_forward_hook(hook))
        with torch.no_grad():
            for b in fit:
                tok["valid"] = b["attention_mask"].bool()
                model(**b)
        for h in hooks:
            h.remove()
        return {n: torch.cat(v) for n, v in got.items()}

    X, Y = capture(pruned, "input"), capture(dense, "output")
    if tokens == "head":
        first = torch.cat([b["attention_mask"].bool() & (torch.arange(16) == 0) for b in fit])
        first = first[torch.cat([b["attention_mask"].bool() for b in fit])]
        for k, n in zip(MATRICES, prunable_names(dense)[-1]):
            if k in HEAD_READ:
                X[n], Y[n] = X[n][first], Y[n][first]
    worst = 0.0
    for n, mask in masks.items():
        W = pruned.get_parameter(n).detach().double()
        b = pruned.get_parameter(n.replace(".weight", ".bias")).detach().double()
        w0 = torch.cat(
            [dense.get_parameter(n), dense.get_parameter(n.replace(".weight", ".bias"))[:, None]], 1
        ).detach()
        A = torch.cat([X[n], torch.ones(len(X[n]), 1, dtype=torch.float64)], 1)
        lam = 1e-2 * float(X[n].square().sum(0).mean())  # compensate's ridge weight at damp 1e-2
        assert float(W[mask == 0].abs().max()) == 0.0
        for r in range(mask.shape[0]):
            y = Y[n][:, r]
            if not mask[r].any():
                assert float(b[r]) == pytest.approx(float(y.mean()), rel=1e-5, abs=1e-6)
                continue
            cols = torch.cat([torch.nonzero(mask[r])[:, 0], torch.tensor([A.shape[1] - 1])])
            Ar, w0r = A[:, cols], w0[r, cols].double()
            best = torch.linalg.solve(Ar.T @ Ar + lam * torch.eye(len(cols)), Ar.T @ y + lam * w0r)
            got = torch.cat([W[r], b[r : r + 1]])[cols]
            f = [float((Ar @ w - y).square().sum() + lam * (w - w0r).square().sum()) for w in (got, best)]
            worst = max(worst, (f[0] - f[1]) / float((y - y.mean()).square().sum()))
    assert worst < 1e-6  # measured: 4e-9 (the statistics are float32 products summed in float64)


def test_compensation_batches_by_length_with_the_drop_checks_examples_first(tokenizer):
    """Calibration.fit: the first compensation_samples drawn examples (all by default), each batch sorted
    by length; its first cfg.drop_check_batches batches hold exactly the first drop_check_samples examples."""
    data, dense = sentiment(), tiny_model("bert", tokenizer)

    def ids(batches):
        return sorted(
            tuple(r[m.bool()].tolist()) for b in batches for r, m in zip(b["input_ids"], b["attention_mask"])
        )

    for n, expected in ((None, 96), (64, 64)):
        cfg = fast(0.5, compensation_samples=n, drop_check_samples=40, batch_size=16)
        calib = calibrate(data, tokenizer, dense, cfg, "shuffle")
        drawn = batches_of(data, calib.examples, tokenizer, dense, cfg)
        assert cfg.drop_check_batches == 3
        assert ids(calib.fit[:3]) == ids(batches_of(data, calib.examples[:40], tokenizer, dense, cfg))
        assert ids(calib.fit) == ids(batches_of(data, calib.examples[:expected], tokenizer, dense, cfg))
        lengths = [int(m.sum()) for b in calib.fit[3:] for m in b["attention_mask"]]
        assert lengths == sorted(lengths)
        if n is None:  # by length, the batches carry less padding than in the drawn order
            pad = [sum(int((b["attention_mask"] == 0).sum()) for b in bs) for bs in (calib.fit, drawn)]
            assert pad[0] < pad[1] / 2


def test_compensation_does_not_depend_on_how_tokens_are_batched(tokenizer):
    """The least-squares solve sums over tokens, so the same examples batched by length or in the drawn
    order give the same compensated weights (up to float32 rounding of the sums)."""
    import copy

    from pgbert.stages.compensation import compensate
    from pgbert.training import apply_masks

    data, dense = sentiment(), tiny_model("bert", tokenizer)
    cfg = fast(0.75, compensation_samples=None)
    calib = calibrate(data, tokenizer, dense, cfg, "shuffle")
    _, masks, _ = prune_model(dense, tokenizer, data, fast(0.75, compensate=False, drop_check=False))
    drawn = batches_of(data, calib.examples, tokenizer, dense, cfg)
    models = []
    for fit in (calib.fit, drawn):
        pruned = copy.deepcopy(dense)
        apply_masks(pruned, masks)
        compensate(dense, pruned, masks, fit, None, task_loss, target="linear")
        models.append(dict(pruned.named_parameters()))
    moved = {n: float((models[0][n] - dense.get_parameter(n) * masks[n]).detach().abs().max()) for n in masks}
    assert max(moved.values()) > 0.05  # compensation moved weights by up to 0.05-0.2 here; the two
    for n in masks:  # refits agree to float32 rounding (measured: at most 3e-5)
        assert float((models[0][n] - models[1][n]).detach().abs().max()) < 1e-4, n


def test_head_tokens_reach_sequence_tasks_compensation_but_never_extractive_qas(tokenizer, tmp_path):
    """compensation_tokens="head" reaches prune_model: a sequence-level task's last layer is fitted and
    scored on first tokens (its held-out errors change; the layer before's do not), while extractive QA,
    whose head reads every token, is compensated on all tokens either way (the same report)."""
    data, dense = sentiment(), tiny_model("bert", tokenizer)

    def errors(model, task, t):
        rep = prune_model(model, tokenizer, task, fast(0.5, compensation_tokens=t))[2]["compensation"]
        return {n: r["error_before"] for n, r in rep.items() if not n.startswith("_")}

    got = {t: errors(dense, data, t) for t in ("all", "head")}
    first, last = prunable_names(dense)
    assert [got["all"][n] for n in first] == [got["head"][n] for n in first]
    ffn_in = last[MATRICES.index("ffn_in")]
    assert got["head"][ffn_in] != got["all"][ffn_in]  # measured on other tokens: 0.38 vs 0.71
    (tmp_path / "tr.json").write_text(json.dumps(squad_json(80)))
    qa_data = load_task(
        "squad", DataOptions(train_file=str(tmp_path / "tr.json"), dev_file=str(tmp_path / "tr.json"))
    )
    qa = tiny_model("bert", tokenizer, qa=True)
    assert errors(qa, qa_data, "head") == errors(qa, qa_data, "all")


def test_fisher_batch_size_one_sums_squared_per_example_gradients(tokenizer):
    """fisher_batch_size=1: the raw Fisher saliency is W^2 times the sum over the drawn examples of each
    example's own squared gradient (the per-example empirical Fisher), computed here one example at a time;
    the default sums squared gradients of batch means, which is not the same."""
    from pgbert.stages.importance import fisher

    data, dense = sentiment(), tiny_model("bert", tokenizer)
    name = prunable_names(dense)[0][MATRICES.index("ffn_in")]
    W = dense.get_parameter(name)
    per_example = calibrate(data, tokenizer, dense, fast(0.5, fisher_batch_size=1), "shuffle")
    default = calibrate(data, tokenizer, dense, fast(0.5), "shuffle")
    assert per_example.examples == default.examples and len(per_example.batches) == len(per_example.examples)
    expected = torch.zeros_like(W)
    for ex in per_example.examples:
        (b,) = batches_of(data, [ex], tokenizer, dense, fast(0.5))
        expected += torch.autograd.grad(dense(**b).loss, W)[0].square()
    expected = W.detach().square() * expected
    got = {
        c: fisher(dense, cal.batches, [name])[0][name]
        for c, cal in (("one", per_example), ("batch", default))
    }
    assert torch.allclose(got["one"], expected, rtol=1e-4, atol=1e-12)
    assert not torch.allclose(got["batch"], expected, rtol=0.1)


@pytest.mark.parametrize("keep_start", [True, False])
def test_refinetune_starts_from_the_one_shot_models_dev_metrics(tokenizer, monkeypatch, keep_start):
    """Stage 6 hands the one-shot model's dev metrics to the re-finetune as its step-0 check (keep_start),
    or nothing (the ablation), and reports which check it kept."""
    import pgbert.pipeline as pipeline

    seen = {}

    def spy(model, tok, data, tcfg, masks=None, teacher=None, start=None):
        seen["start"] = start
        return model, {"evals": [], "best_step": 0 if start else 3}

    monkeypatch.setattr(pipeline, "finetune", spy)
    _, _, rep = prune_model(
        tiny_model("bert", tokenizer),
        tokenizer,
        sentiment(),
        fast(0.5, finetune_epochs=0.1, keep_start=keep_start),
    )
    m = rep["metrics"]
    assert seen["start"] == (m["pruned"] if keep_start else None)
    assert m["finetune_best_step"] == (0 if keep_start else 3)

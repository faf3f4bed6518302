import json

import pytest
import torch
from conftest import FAMILIES, fast_config, sentiment_rows, squad_json, tiny_model

from pgbert import api
from pgbert.errors import PgbertError
from pgbert.tasks import DataOptions, TaskData, get_task, load_task
from pgbert.training import TrainConfig, apply_masks, evaluate, finetune


def sentiment_data(n=160, seed=0):
    rows = sentiment_rows(n, seed)
    ex = [{"text": r["text"], "text_pair": None, "label": r["label"]} for r in rows]
    return TaskData(
        get_task("sst2"), ex[: n * 3 // 4], {"dev": ex[n * 3 // 4 :]}, ["negative", "positive"], "synthetic"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_learns_single_sentence_task(tokenizer, family):
    data = sentiment_data()
    model = tiny_model(family, tokenizer)
    before = evaluate(model, tokenizer, data)["accuracy"]
    model, hist = finetune(model, tokenizer, data, TrainConfig(epochs=6, lr=1e-3, batch_size=16, quiet=True))
    after = evaluate(model, tokenizer, data)
    assert after["accuracy"] >= 0.9 > before or after["accuracy"] == 1.0
    assert hist["steps"] == 6 * 8 and len(hist["evals"]) == 6


def test_pair_and_regression_tasks(tokenizer):
    rows = sentiment_rows(80)
    pair = TaskData(
        get_task("rte"),
        [{"text": r["text"], "text_pair": "is it good", "label": r["label"]} for r in rows],
        {"dev": [{"text": "good", "text_pair": "x", "label": 1}] * 4},
        ["entailment", "not_entailment"],
        "s",
    )
    m, _ = finetune(tiny_model("bert", tokenizer), tokenizer, pair, TrainConfig(max_steps=3, quiet=True))
    assert set(evaluate(m, tokenizer, pair)) == {"accuracy", "loss"}
    reg = TaskData(
        get_task("stsb"),
        [{"text": r["text"], "text_pair": "a", "label": 2.5 * r["label"]} for r in rows],
        {"dev": [{"text": r["text"], "text_pair": "a", "label": 2.5 * r["label"]} for r in rows[:20]]},
        None,
        "s",
    )
    m = tiny_model("roberta", tokenizer, num_labels=1)
    m.config.problem_type = "regression"
    m, _ = finetune(m, tokenizer, reg, TrainConfig(epochs=15, lr=1e-3, batch_size=16, quiet=True))
    assert evaluate(m, tokenizer, reg)["pearson"] > 0.8


def test_qa_finetune_and_evaluate(tokenizer, tmp_path):
    (tmp_path / "tr.json").write_text(json.dumps(squad_json(64)))
    (tmp_path / "dv.json").write_text(json.dumps(squad_json(16, seed=3)))
    data = load_task(
        "squad", DataOptions(train_file=str(tmp_path / "tr.json"), dev_file=str(tmp_path / "dv.json"))
    )
    m = tiny_model("distilbert", tokenizer, qa=True)
    m, _ = finetune(m, tokenizer, data, TrainConfig(epochs=15, lr=2e-3, batch_size=16, quiet=True))
    metrics = evaluate(m, tokenizer, data)
    assert metrics["exact_match"] >= 75.0  # the answer is always the city after 'lived in'


def test_masks_stay_fixed_during_training(tokenizer):
    data = sentiment_data(64)
    m = tiny_model("bert", tokenizer)
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    mask = (torch.rand_like(m.get_parameter(name)) > 0.5).float()
    m, _ = finetune(m, tokenizer, data, TrainConfig(max_steps=4, lr=1e-2, quiet=True), masks={name: mask})
    w = m.get_parameter(name)
    assert bool((w[mask == 0] == 0).all()) and bool((w[mask == 1] != 0).all())
    apply_masks(m, {name: torch.zeros_like(mask)})
    assert float(m.get_parameter(name).detach().abs().sum()) == 0.0


def test_kd_runs_and_api_writes_run_folder(tokenizer, save_tiny, tmp_path):
    path = save_tiny("bert")
    tr = tmp_path / "tr.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(48)))
    out = tmp_path / "run"
    opts = DataOptions(train_file=str(tr), dev_file=str(tr))
    _, result = api.finetune(path, "classification", out, opts, TrainConfig(max_steps=2, quiet=True))
    assert {
        "config.json",
        "model.safetensors",
        "metrics.json",
        "run_config.json",
        "versions.json",
        "log.txt",
    } <= {p.name for p in out.iterdir()}
    assert (
        json.loads((out / "metrics.json").read_text())["metrics"]["dev"]["accuracy"]
        == result["metrics"]["dev"]["accuracy"]
    )


def test_prune_refinetunes_at_the_learning_rate_the_model_was_finetuned_with(
    save_tiny, tmp_path, monkeypatch
):
    """pgbert prune's re-finetune runs at the lr `pgbert finetune` recorded in the model folder but never
    below REFINETUNE_LR, at REFINETUNE_LR for a folder without one, and at an explicit lr when given (below
    the floor too); the report says which."""
    import pgbert.pipeline as pipeline
    from pgbert.config import REFINETUNE_LR

    seen, real = [], pipeline.finetune

    def spy(model, tokenizer, data, cfg, **kw):
        seen.append(cfg.lr)
        return real(model, tokenizer, data, cfg, **kw)

    monkeypatch.setattr(pipeline, "finetune", spy)
    tr = tmp_path / "tr.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(96)))
    opts = DataOptions(train_file=str(tr), dev_file=str(tr))
    plain, tuned = save_tiny("bert"), tmp_path / "tuned"
    api.finetune(plain, "classification", tuned, opts, TrainConfig(max_steps=2, lr=3e-4, quiet=True))
    seen.clear()
    for model, lr, want in [(tuned, None, 3e-4), (plain, None, REFINETUNE_LR), (tuned, 2e-5, 2e-5)]:
        cfg = fast_config(finetune_epochs=0.2, lr=lr)
        _, rep = api.prune(model, "classification", 0.5, None, opts, cfg, compact=False)
        assert seen[-1] == want and rep["config"]["lr"] == want, (model, lr)
    assert len(seen) == 3 and REFINETUNE_LR == 5e-5
    config = json.loads((tuned / "run_config.json").read_text())
    (tuned / "run_config.json").write_text(json.dumps({**config, "lr": 2e-5}))  # fine-tuned below the floor
    _, rep = api.prune(
        tuned, "classification", 0.5, None, opts, fast_config(finetune_epochs=0.2), compact=False
    )
    assert seen[-1] == rep["config"]["lr"] == 5e-5
    (tuned / "run_config.json").write_text("{lr: 3e-4")
    with pytest.raises(PgbertError, match="run_config.json is not a JSON object: remove it, or give"):
        api.prune(tuned, "classification", 0.5, None, opts, fast_config(finetune_epochs=0.2), compact=False)


def test_kd_loss_is_tempered_kl_and_mse():
    """KL(softmax(t/T) || softmax(s/T)) * T^2 for classes, MSE for regression; zero when they agree."""
    from pgbert.training import _kd_loss

    s, t = torch.tensor([[1.0, -1.0, 0.5]]), torch.tensor([[0.2, 0.3, -2.0]])
    p, q = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    want = float((p * (p.log() - q.log())).sum()) * 4
    assert float(_kd_loss(s, t, "classification", 2.0)) == pytest.approx(want, rel=1e-5)
    assert float(_kd_loss(t, t, "classification", 2.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(_kd_loss(s, t, "regression", 2.0)) == pytest.approx(float(((s - t) ** 2).mean()))


def test_kd_teacher_steers_training(tokenizer, tmp_path):
    """With kd_alpha > 0 the teacher changes the trained weights; with kd_alpha = 0 it is ignored."""
    tr = tmp_path / "tr.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(48)))
    data = load_task("classification", DataOptions(train_file=str(tr), dev_file=str(tr)))

    def run(alpha, teacher_seed):
        student, _ = finetune(
            tiny_model("bert", tokenizer, seed=1),
            tokenizer,
            data,
            TrainConfig(max_steps=2, kd_alpha=alpha, quiet=True),
            teacher=tiny_model("bert", tokenizer, seed=teacher_seed),
        )
        return student.classifier.weight.detach()

    assert not torch.allclose(run(0.5, 2), run(0.5, 3))
    assert torch.equal(run(0.0, 2), run(0.0, 3))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_task_type_runs_on_every_family(tokenizer, family, tmp_path):
    """Pair classification, regression and QA: two training steps and an evaluation per family."""
    rows = sentiment_rows(32)
    pair = TaskData(
        get_task("mrpc"),
        [{"text": r["text"], "text_pair": "and so on", "label": r["label"]} for r in rows],
        {"dev": [{"text": r["text"], "text_pair": "x", "label": r["label"]} for r in rows[:8]]},
        ["not_equivalent", "equivalent"],
        "s",
    )
    m, _ = finetune(tiny_model(family, tokenizer), tokenizer, pair, TrainConfig(max_steps=2, quiet=True))
    assert set(evaluate(m, tokenizer, pair)) == {"accuracy", "f1", "loss"}
    reg = TaskData(
        get_task("stsb"),
        [{"text": r["text"], "text_pair": "a", "label": float(r["label"])} for r in rows],
        {
            "dev": [
                {"text": r["text"], "text_pair": "a", "label": float(i % 3)} for i, r in enumerate(rows[:8])
            ]
        },
        None,
        "s",
    )
    m = tiny_model(family, tokenizer, num_labels=1)
    m.config.problem_type = "regression"
    m, _ = finetune(m, tokenizer, reg, TrainConfig(max_steps=2, quiet=True))
    assert set(evaluate(m, tokenizer, reg)) == {"pearson", "spearman"}
    (tmp_path / "q.json").write_text(json.dumps(squad_json(12)))
    qa = load_task(
        "squad", DataOptions(train_file=str(tmp_path / "q.json"), dev_file=str(tmp_path / "q.json"))
    )
    m, _ = finetune(
        tiny_model(family, tokenizer, qa=True), tokenizer, qa, TrainConfig(max_steps=2, quiet=True)
    )
    assert set(evaluate(m, tokenizer, qa)) == {"exact_match", "f1"}


def test_best_checkpoint_breaks_metric_ties_by_dev_loss():
    """Equal dev accuracy: the check with the lower dev loss wins (a later one with equal loss too)."""
    from pgbert.training import improves

    assert improves(0.9, 0.5, 0.8, 0.1)  # higher metric wins whatever the loss
    assert improves(0.9, 0.3, 0.9, 0.4)  # tie: lower loss wins
    assert not improves(0.9, 0.5, 0.9, 0.4)  # tie: higher loss loses (the old rule kept the earliest)
    assert improves(0.9, 0.4, 0.9, 0.4)
    assert not improves(0.8, 0.0, 0.9, 0.4)


SCRIPTED_CHECKS = [(0.6, 1.0), (0.9, 0.5), (0.7, 1.0), (0.9, 0.6)]  # (accuracy, loss) of dev checks 1-4


def script_dev_checks(monkeypatch) -> list[dict]:
    """Make finetune's dev checks score SCRIPTED_CHECKS in turn; returns the weights seen at each check."""
    import pgbert.training as training

    states = []

    def scripted(model, *a, **kw):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        acc, loss = SCRIPTED_CHECKS[len(states) - 1]
        return {"accuracy": acc, "loss": loss}

    monkeypatch.setattr(training, "evaluate", scripted)
    return states


def test_finetune_keeps_the_best_dev_check(tokenizer, monkeypatch):
    """Early stopping returns the weights of the best dev check (ties to the lower dev loss), not the last."""
    states = script_dev_checks(monkeypatch)  # check 4 ties check 2 with a higher loss
    model, hist = finetune(
        tiny_model("bert", tokenizer),
        tokenizer,
        sentiment_data(),
        TrainConfig(max_steps=4, eval_steps=1, lr=1e-3, quiet=True),
    )
    assert [e["step"] for e in hist["evals"]] == [1, 2, 3, 4] and hist["best"] == 0.9
    kept = model.state_dict()
    assert all(torch.equal(kept[k], states[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], states[3][k]) for k in kept)  # training moved the weights after it


@pytest.mark.parametrize(
    ("start", "best_step"),
    [
        ({"accuracy": 0.95, "loss": 0.3}, 0),  # no check beats the model as given: it is returned
        ({"accuracy": 0.9, "loss": 0.5}, 2),  # a check equal in metric and loss is later: it wins
        ({"accuracy": 0.9, "loss": 0.4}, 0),  # equal metric, lower loss: the start wins the tie
        ({"accuracy": 0.8, "loss": 0.1}, 2),
    ],
)
def test_finetune_start_competes_as_step_zero(tokenizer, monkeypatch, start, best_step):
    """With start (the given model's dev metrics), the given model is the check at step 0: kept, weights
    and all, when no later check beats it under the same tie rule."""
    states = script_dev_checks(monkeypatch)
    model = tiny_model("bert", tokenizer)
    given = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model, hist = finetune(
        model,
        tokenizer,
        sentiment_data(),
        TrainConfig(max_steps=4, eval_steps=1, lr=1e-3, quiet=True),
        start=start,
    )
    assert hist["best_step"] == best_step and len(hist["evals"]) == 4
    expect = given if best_step == 0 else states[best_step - 1]
    kept = model.state_dict()
    assert all(torch.equal(kept[k], expect[k]) for k in kept)
    assert hist["best"] == (start["accuracy"] if best_step == 0 else 0.9)

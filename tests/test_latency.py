"""Latency budgets (issue 14): the measured cost table, the knapsack under a time limit, the cache, errors."""

import itertools
import json
import logging

import numpy as np
import pytest
import torch
from conftest import fast_config, tiny_model

from pgbert import profile
from pgbert.adapters import prunable_names
from pgbert.cli import main
from pgbert.stages.allocation import Choice, Option, OptionSpace, allocate, choose_masks, predicted_ms
from pgbert.stages.importance import head_importance, magnitude_scores


def synthetic_table(geometry: profile.Geometry, fixed: float = 1.0) -> profile.CostTable:
    """A table whose times are known in closed form: attention h ms for h heads, FFN-in n * w / 1000 and
    FFN-out n * w / 2000 ms, grouped k ms."""
    neurons = [16, 32, 64, 128]
    widths = [16, 32, 48, 64]
    return profile.CostTable(
        {
            "geometry": vars(geometry),
            "setting": vars(profile.Setting()),
            "environment": {},
            "attention_ms": [float(h) for h in range(geometry.heads + 1)],
            "neurons": neurons,
            "ffn_in_ms": {str(w): [n * w / 1000 for n in neurons] for w in widths},
            "ffn_out_ms": {str(w): [n * w / 2000 for n in neurons] for w in widths},
            "grouped_ms": {"2x2": 2.0, "4x2": 1.0, "4x3": 1.5, "4x4": 2.0},
            "fixed_ms": fixed,
        }
    )


def test_cost_table_interpolates_between_measured_points():
    t = synthetic_table(profile.Geometry(2, 64, 4, 128))
    assert t.ffn_ms(64, 64, 32) == pytest.approx(64 * 64 / 1000 + 64 * 32 / 2000)  # grid points
    assert t.ffn_ms(48, 40, 56) == pytest.approx(48 * 40 / 1000 + 48 * 56 / 2000)  # linear in n and widths
    assert t.ffn_ms(0, 64, 64) == 0.0
    assert t.dense_ms() == pytest.approx(1.0 + 2 * (4 + 128 * 64 / 1000 + 128 * 64 / 2000))


def test_knapsack_under_a_time_limit_is_optimal():
    """Against brute force over every combination: weights and time both within budget, value maximal."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        items = []
        for _ in range(4):
            opts = []
            for _ in range(int(rng.integers(2, 5))):
                cost, value = int(rng.integers(0, 50)), float(rng.random())
                o = Option("dense", cost, value, value, 1, 1, lambda: [])
                opts.append(Choice((o,), ms=float(rng.random() * 10)))
            items.append(opts)
        budget, ms_budget = 100.0, 15.0
        best = max(
            (
                sum(c.value for c in combo)
                for combo in itertools.product(*items)
                if sum(c.cost for c in combo) <= budget and sum(c.ms for c in combo) <= ms_budget
            ),
            default=None,
        )
        if best is None:
            continue
        pick = allocate(items, budget, ms_budget=ms_budget)
        chosen = [opts[i] for opts, i in zip(items, pick)]
        assert sum(c.ms for c in chosen) <= ms_budget + 1e-9
        assert sum(c.value for c in chosen) == pytest.approx(best, rel=1e-6), trial


@pytest.mark.parametrize("speedup", [1.5, 3.0])
def test_masks_under_a_latency_budget_meet_the_predicted_time(tokenizer, speedup):
    model = tiny_model("bert", tokenizer)
    names = prunable_names(model)
    scores = magnitude_scores(model, [n for layer in names for n in layer])
    space = OptionSpace(head_values=head_importance(scores, names, 4))
    table = synthetic_table(profile.Geometry(2, 64, 4, 128))
    target = table.dense_ms() / speedup
    chosen, masks, _ = choose_masks(scores, names, space, None, None, (table, 16, target - table.fixed_ms))
    got = predicted_ms(chosen, names, table, 16)
    assert got <= target + 1e-9
    # the budget is spent, not wasted: within one head's or one FFN step's time of the target
    assert target - got <= 1.0 + 1e-9


def test_profile_is_cached_and_another_machines_table_is_ignored(tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(profile, "CACHE", tmp_path)
    monkeypatch.setattr(profile, "MIN_RUN_TIME", 0.005)
    monkeypatch.setattr(profile, "BUSY_CHANGE", 100.0)  # about the cache: a noisy CI machine must not matter
    calls = []
    real = profile.measure_table

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(profile, "measure_table", counted)
    model = tiny_model("bert", tokenizer)
    s = profile.Setting(threads=1, batch_size=2, seq_len=16)
    first = profile.cost_table(model, s)
    assert len(first.attention_ms) == 5 and first.attention_ms[4] > 0 and first.fixed_ms > 0
    second = profile.cost_table(model, s)
    assert len(calls) == 1 and second.data["cached"] and second.attention_ms == first.attention_ms
    path = profile.cache_path(first.geometry, s, tmp_path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "machine": "another machine"}))
    with caplog.at_level(logging.WARNING, logger="pgbert"):
        profile.cost_table(model, s)
    assert len(calls) == 2 and "measured on another machine" in caplog.text


def cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "extra, text",
    [
        (["--speedup", "1.0"], "--speedup must be above 1"),
        (["--speedup", "2", "--device", "cuda"], "no CUDA device is available"),
        (["--speedup", "2", "--method", "unstructured-magnitude"], "has no latency budget"),
        (["--speedup", "2", "--sparsity", "0.5", "--method", "kwon"], "takes one budget"),
        (["--speedup", "1000"], "the largest reachable speedup is"),
    ],
)
def test_latency_budget_errors(save_tiny, tmp_path, files, capsys, monkeypatch, extra, text):
    if torch.cuda.is_available() and "cuda" in extra:
        pytest.skip("a CUDA device is present")
    monkeypatch.setattr(profile, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(profile, "MIN_RUN_TIME", 0.005)
    out = tmp_path / "out"
    args = ["prune", str(save_tiny()), "--train-file", str(files), "--dev-file", str(files)]
    capsys.readouterr()
    args += ["--output", str(out), "--quiet", "--importance", "magnitude", "--target-batch-size", "2"]
    args += ["--target-seq-len", "16", "--threads", "1", *extra]
    code, err = cli(args, capsys)
    err = [e for e in err if not e.startswith("warning: the machine was busy")]  # a loaded test machine
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and text in err[0], err
    assert not out.exists()


def test_prune_to_a_speedup_reports_predicted_and_measured(save_tiny, tmp_path, files, monkeypatch):
    from pgbert import api
    from pgbert.tasks import DataOptions

    monkeypatch.setattr(profile, "CACHE", tmp_path / "cache")

    # a known cost table (1.5x is reachable in it whatever the machine's load); the rounds are still measured
    def known_table(geometry, setting, *a, **k):
        table = synthetic_table(geometry)
        table.data.update(setting=vars(setting), steady=True)
        return table

    monkeypatch.setattr(profile, "measure_table", known_table)
    cfg = fast_config(importance="magnitude", speedup=1.5, threads=1, target_batch_size=2, target_seq_len=16)
    opts = DataOptions(train_file=str(files), dev_file=str(files))
    _, rep = api.prune(save_tiny(), "classification", None, tmp_path / "out", opts, cfg)
    lat = rep["latency"]
    assert lat["target_speedup"] == pytest.approx(1.5)
    # the kept choice is one of the measured rounds (each solved under its own, rescaled budget)
    assert any(st["predicted"] == pytest.approx(lat["predicted_speedup"]) for st in lat["calibration"])
    assert 1 <= len(lat["calibration"]) <= 3
    assert lat["setting"]["batch_size"] == 2 and lat["measured_speedup"] == rep["compact"]["speedup"]
    assert rep["compact"]["bench"]["batch_size"] == 2 and rep["compact"]["bench"]["seq_len"] == 16


@pytest.mark.parametrize("noisy", [False, True])
def test_bench_speedup_is_the_median_round_ratio_and_a_busy_machine_is_flagged(
    tokenizer, monkeypatch, caplog, noisy
):
    from pgbert import bench

    model, against = tiny_model("bert", tokenizer), tiny_model("bert", tokenizer, seed=1)
    dense_ms = iter([20.0, 20.0, 30.0, 20.0, 60.0, 20.0] if noisy else [20.0, 20.0, 20.2, 19.8, 20.0, 20.1])
    model_ms = iter([10.0] * 6)

    def fake(m, *a, **k):
        if a[3] == 2:  # the warm-up call
            return {"median_ms": 0.0}
        return {"median_ms": next(model_ms) if m is model else next(dense_ms)}

    monkeypatch.setattr(bench, "latency", fake)
    with caplog.at_level(logging.WARNING, logger="pgbert"):
        res = bench.measure(model, against, 2, 16, repeats=6)
    ratios = sorted([2.0, 2.0, 3.0, 2.0, 6.0, 2.0] if noisy else [2.0, 2.0, 2.02, 1.98, 2.0, 2.01])
    assert res["speedup"] == pytest.approx(np.median(ratios))
    q1, q3 = np.percentile(ratios, [25, 75])
    assert res["spread"] == pytest.approx((q3 - q1) / np.median(ratios))
    assert res["busy"] is noisy and ("machine was busy" in caplog.text) is noisy
    assert res["environment"]["cpu"] == bench.machine()


def test_measured_rounds_loosen_an_overshoot_and_tighten_a_shortfall(monkeypatch):
    """A choice measured far above the target is loosened, one short of it tightened; the returned choice is
    the measured one closest above the target."""
    from pgbert.methods import latency

    table = synthetic_table(profile.Geometry(2, 64, 4, 128))
    budget = latency.LatencyBudget(table, 16, table.dense_ms() / 2.0, 2.0)
    measured = iter([5.6, 1.9, 2.1])
    monkeypatch.setattr(latency, "measure_choice", lambda dense, masks, setting: next(measured))
    seen = []

    def choose(b):
        seen.append(b.target_ms)
        return {}, table.dense_ms() / 2, {"round": len(seen)}

    result, steps = budget.choose_measured(None, choose)
    assert [s["measured"] for s in steps] == [5.6, 1.9, 2.1] and result == {"round": 3}
    assert seen[1] == pytest.approx(seen[0] * 5.6 / 2.0)  # loosened by the overshoot
    assert seen[2] == pytest.approx(seen[1] * 1.9 / 2.0)  # tightened by the shortfall


def test_a_profile_taken_on_a_busy_machine_is_not_cached(tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(profile, "CACHE", tmp_path)
    calls = []

    def fake_time(fn, min_run_time):
        calls.append(1)
        return 1.0 if len(calls) == 1 else 2.0  # the first point, timed again at the end, doubled

    monkeypatch.setattr(profile, "_time_ms", fake_time)
    model = tiny_model("bert", tokenizer)
    with caplog.at_level(logging.WARNING, logger="pgbert"):
        table = profile.cost_table(model, profile.Setting(threads=1, batch_size=2, seq_len=16))
    assert not table.data["steady"] and "machine was busy while profiling" in caplog.text
    assert list(tmp_path.iterdir()) == []

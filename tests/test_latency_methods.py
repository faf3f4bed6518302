"""Every structured method under one measured-time budget (issue 14): Kwon et al.'s latency mode, structured
Fisher priced by the cost table, and `compare --speedup`."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import fast_config
from test_compare import compare_setup
from test_latency import synthetic_table

from pgbert import api, profile
from pgbert.comparison import LATENCY_METHODS, CompareConfig
from pgbert.methods import latency
from pgbert.methods.kwon import fit_piecewise, search_latency
from pgbert.methods.structured import structured_fisher_keep
from pgbert.stages.allocation import LatencyInfeasible
from pgbert.tasks import DataOptions


def test_piecewise_fit_recovers_a_piecewise_linear_table():
    """A table that is exactly c up to a threshold and then c + slope per unit is fitted exactly."""
    fit = fit_piecewise(np.array([2.0, 2.0, 2.0, 2.5, 3.0, 3.5]))
    assert (fit.threshold, fit.c, fit.slope) == (3, pytest.approx(2.0), pytest.approx(0.5))
    flat = fit_piecewise(np.array([4.0, 4.0, 4.0]))  # no growth: one constant, slope 0
    assert flat.c == pytest.approx(4.0) and flat.slope == 0.0


def test_latency_search_by_hand():
    """Two layers, 4 heads, 8 neurons. Attention fits c 2, threshold 2, slope 1; the FFN c 1, threshold 4,
    slope 0.5. Dense time 14, floor 2 (2 + 1) = 6; at constraint 0.75 the split has 4.5 ms: 2 more heads
    (2 ms) and 5 more neurons (2.5 ms) keep the most Fisher (3 + 10.4), against 1 + 7 (13.05), 3 + 3 (12.5)
    and 4 + 1 (7.7)."""
    mha = np.array([2.0, 2.0, 3.0, 4.0])
    ffn = np.array([1.0, 1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0])
    hf = torch.tensor([[4.0, 3.0, 2.0, 1.0], [10.0, 1.0, 0.5, 0.2]])
    nf = torch.tensor([[8.0, 7, 6, 5, 4, 3, 2, 1], [0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25]])
    heads, neurons = search_latency(hf, nf, 0.75, mha, ffn)
    assert heads.tolist() == [[True] * 4, [True, True, False, False]]
    assert neurons.tolist() == [[True] * 8, [True] * 5 + [False] * 3]
    with pytest.raises(LatencyInfeasible):  # 0.4 x 14 = 5.6 ms is below the floor of 6 ms
        search_latency(hf, nf, 0.4, mha, ffn)


def linear_table(geometry: profile.Geometry, head_ms: float = 1.0, neuron_ms: float = 0.01, setting=None):
    """A table linear in kept units (no per-sublayer overhead): h x head_ms, n x neuron_ms."""
    g = geometry
    return profile.CostTable(
        {
            "geometry": vars(g),
            "setting": vars(setting or profile.Setting()),
            "environment": {},
            "attention_ms": [h * head_ms for h in range(g.heads + 1)],
            "neurons": [1, g.ffn],
            "ffn_in_ms": {str(g.hidden): [neuron_ms / 2, g.ffn * neuron_ms / 2]},
            "ffn_out_ms": {str(g.hidden): [neuron_ms / 2, g.ffn * neuron_ms / 2]},
            "grouped_ms": {},
            "fixed_ms": 1.0,
        }
    )


def test_structured_fisher_spends_a_time_budget_by_fisher_per_ms():
    """Within the time budget, and no unit left out could still fit; a unit is ranked by Fisher per ms: a head
    (1 ms) with Fisher 50 loses to 100 neurons (0.01 ms each) with Fisher 1 each."""
    g = profile.Geometry(2, 64, 4, 128)
    table = linear_table(g)
    gen = torch.Generator().manual_seed(0)
    fisher = [
        {"head": torch.rand(4, generator=gen), "neuron": torch.rand(128, generator=gen)} for _ in range(2)
    ]
    for ms_budget in (0.5, 2.0, 3.7):
        keep = structured_fisher_keep(fisher, 10**9, 1, table=table, ms_budget=ms_budget)
        used = latency.units_ms(table, keep) - table.fixed_ms
        assert used <= ms_budget + 1e-9
        left = ms_budget - used
        for k in keep:
            assert k["head"].all() or left < 1.0 + 1e-9
            assert k["neuron"].all() or left < 0.01 + 1e-9
    fisher = [
        {"head": torch.tensor([50.0, 0, 0, 0]), "neuron": torch.ones(128)},
        {"head": torch.zeros(4), "neuron": torch.zeros(128)},
    ]
    keep = structured_fisher_keep(fisher, 10**9, 1, table=table, ms_budget=1.0)
    assert int(keep[0]["neuron"].sum()) == 100 and int(keep[0]["head"].sum()) == 0
    both = structured_fisher_keep(fisher, 4, 1, budget=50, table=table, ms_budget=1.0)  # and a weight budget
    assert int(both[0]["neuron"].sum()) == 50


@pytest.mark.parametrize("method", ["structured-fisher", "kwon"])
def test_baselines_prune_to_a_speedup(save_tiny, tmp_path, files, monkeypatch, method):
    """Structured Fisher and Kwon et al. take --speedup like PGB: the report holds the target, the table's
    prediction for the kept choice and the measured speedup of the compact model. The table is a known one:
    a table profiled on a tiny model is noise, and Kwon et al.'s reachable speed on it sometimes fell below
    the target."""
    setting = profile.Setting(threads=1, batch_size=2, seq_len=16)
    table = linear_table(profile.Geometry(2, 64, 4, 128), setting=setting)
    monkeypatch.setattr(profile, "cost_table", lambda model, s, quiet=True: table)
    cfg = fast_config(method=method, speedup=1.1, threads=1, target_batch_size=2, target_seq_len=16)
    opts = DataOptions(train_file=str(files), dev_file=str(files))
    _, rep = api.prune(save_tiny(), "classification", None, tmp_path / "out", opts, cfg)
    lat = rep["latency"]
    assert lat["target_speedup"] == pytest.approx(1.1) and 1 <= len(lat["calibration"]) <= 3
    assert any(st["predicted"] == pytest.approx(lat["predicted_speedup"]) for st in lat["calibration"])
    assert lat["measured_speedup"] == rep["compact"]["speedup"]


def test_compare_at_equal_speedups(save_tiny, tmp_path, monkeypatch):
    """`compare --speedup`: every latency method at each speedup, rows labelled by it, the speedup measured
    at the deployment setting, and the plot of accuracy against measured speedup (a known table, as above)."""
    table = synthetic_table(profile.Geometry(2, 64, 4, 128))  # PGB's options need widths and grouped layouts
    table.data["setting"] = vars(profile.Setting(threads=1, batch_size=2, seq_len=16))
    monkeypatch.setattr(profile, "cost_table", lambda model, s, quiet=True: table)
    model, opts, cfg = compare_setup(save_tiny, tmp_path)
    cfg = replace(cfg, speedups=(1.1,), methods=LATENCY_METHODS, seeds=1, finetune_epochs=0)
    cfg = replace(cfg, threads=1, target_batch_size=2, target_seq_len=16)
    out = tmp_path / "cmp"
    rows = api.compare(model, "classification", out, opts, cfg)
    assert sorted(r["method"] for r in rows) == sorted(LATENCY_METHODS)
    for r in rows:
        assert (r["budget"], r["target"], r["sparsity"]) == ("speedup", 1.1, None)
        assert r["bench_setting"]["batch_size"] == 2 and r["latency"]["target_speedup"] == pytest.approx(1.1)
    assert "| pgb | speedup 1.1x |" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 0


def test_compare_at_a_speed_refuses_a_method_without_a_latency_budget(tmp_path):
    from pgbert.errors import PgbertError

    cfg = CompareConfig(speedups=(2.0,), methods=("pgb", "unstructured-magnitude"))
    with pytest.raises(PgbertError, match="has no latency budget"):
        api.compare(tmp_path / "m", "sst2", tmp_path / "out", None, cfg)
    assert not (tmp_path / "out").exists()


def test_a_speed_out_of_a_methods_reach_is_a_note_not_a_failure():
    """Kwon et al.'s latency mode keeps units in every layer, so it may not reach a speed the others reach:
    compare says so next to the table instead of stopping."""
    from pgbert.comparison import summarise, unreachable_notes

    rows = [
        {"method": "pgb", "budget": "speedup", "target": 8.0, "seed": 0, "oneshot": 0.7, "finetuned": 0.8},
        {"method": "kwon", "budget": "speedup", "target": 8.0, "seed": 0, "unreachable": "largest 6.1x"},
    ]
    for r in rows[:1]:
        r.update({k: 0.0 for k in ("masked", "flops_ratio", "speedup", "prune_seconds", "params_kept")})
        r["sparsity_achieved"] = 0.9
    assert [s["method"] for s in summarise(rows)] == ["pgb"]
    assert unreachable_notes(rows) == "\nkwon at speedup 8x: not reached (largest 6.1x)\n"

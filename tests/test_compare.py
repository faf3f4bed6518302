"""Baselines and the side-by-side comparison on tiny models."""

import json
import sys

import pytest
import torch
from conftest import benchmark, sentiment_rows, tiny_model

from pgbert import api
from pgbert.adapters import prunable_names
from pgbert.comparison import METHODS, CompareConfig, markdown, paired
from pgbert.config import PruneConfig
from pgbert.errors import PgbertError
from pgbert.methods.structured import structured_fisher_keep, unit_costs, unit_masks_to_weight_masks
from pgbert.pipeline import batches_of
from pgbert.stages.importance import fisher_and_units, unit_calibrate
from pgbert.tasks import DataOptions, TaskData, get_task


def data():
    ex = [{"text": r["text"], "text_pair": None, "label": r["label"]} for r in sentiment_rows(200)]
    return TaskData(get_task("sst2"), ex[:150], {"dev": ex[150:]}, ["negative", "positive"], "synthetic")


def fisher_of(tokenizer, n: int = 64, batch_size: int = 16, layers: int = 2):
    """A tiny BERT, its prunable names, calibration batches, weight scores and unit Fisher."""
    model = tiny_model("bert", tokenizer, layers=layers)
    d = data()
    names = prunable_names(model)
    batches = batches_of(d, d.train[:n], tokenizer, model, PruneConfig(sparsity=0.5, batch_size=batch_size))
    scores, units = fisher_and_units(model, batches, names, heads=4)
    return model, names, batches, scores, units


def test_unit_fisher_matches_mask_gradient(tokenizer):
    """dL/dm for a neuron mask equals sum(W * dL/dW) over the FFN-out column it scales."""
    model, _, (batch,), _, units = fisher_of(tokenizer, n=16)
    lin = model.bert.encoder.layer[0].output.dense
    m = torch.ones(lin.in_features, requires_grad=True)
    h = lin.register_forward_pre_hook(lambda mod, a: (a[0] * m,))
    model(**batch).loss.backward()
    h.remove()
    assert torch.allclose(units[0]["neuron"], m.grad.square(), rtol=1e-4, atol=1e-10)


def test_qk_unit_fisher_matches_mask_gradient(tokenizer):
    """A Q/K dim's unit gradient is half of dL/dm for a mask scaling that dim's Q and K rows (weights, not
    bias): the bilinear score term makes the derivative at m = 1 count the dim twice."""
    model, _, (batch,), _, units = fisher_of(tokenizer, n=16)
    sa = model.bert.encoder.layer[1].attention.self
    m = torch.ones(sa.query.out_features, requires_grad=True)
    hooks = [
        lin.register_forward_hook(lambda mod, a, out: (out - mod.bias) * m + mod.bias)
        for lin in (sa.query, sa.key)
    ]
    model(**batch).loss.backward()
    for h in hooks:
        h.remove()
    assert torch.allclose(units[1]["qk"], (m.grad / 2).square(), rtol=1e-4, atol=1e-12)


def test_unit_calibration_prices_whole_units_by_mask_fisher(tokenizer):
    model, names, _, scores, units = fisher_of(tokenizer)
    cal = unit_calibrate(scores, names, units)
    q, k, v, o, f1, f2 = names[0]
    torch.testing.assert_close(cal[f1].sum(1) + cal[f2].sum(0), units[0]["ffn"], rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(cal[v].sum(1) + cal[o].sum(0), units[0]["vo"], rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(cal[q].sum(1) + cal[k].sum(1), units[0]["qk"], rtol=1e-4, atol=1e-12)
    # one scale per unit and one per hidden feature: cal / scores is an outer product (rank one)
    r = (cal[f1] / scores[f1]).double()
    torch.testing.assert_close(r[:4, :1] * r[:1, :5] / r[0, 0], r[:4, :5], rtol=1e-4, atol=0)
    assert not torch.allclose(r[:, 0], r[:, 1])  # the feature scales differ


def test_structured_budget(tokenizer):
    model, names, _, _, units = fisher_of(tokenizer)
    total = sum(model.get_parameter(n).numel() for layer in names for n in layer)
    hc, nc = unit_costs(model)
    assert (hc, nc) == (4 * 64 * 16, 2 * 64)
    keep = structured_fisher_keep(units, hc, nc, 0.5 * total)
    cost = sum(int(k["head"].sum()) * hc + int(k["neuron"].sum()) * nc for k in keep)
    assert 0.5 * total - max(hc, nc) <= cost <= 0.5 * total
    masks = unit_masks_to_weight_masks(model, names, keep)
    assert sum(float(m.sum()) for m in masks.values()) == cost


def compare_setup(save_tiny, tmp_path):
    tr = tmp_path / "tr.jsonl"
    tr.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(160)))
    opts = DataOptions(train_file=str(tr), dev_file=str(tr), max_dev_samples=40)
    cfg = CompareConfig(
        sparsities=(0.5,),
        seeds=2,
        calib_samples=64,
        compensation_samples=32,
        finetune_epochs=0.1,
        batch_size=16,
        bench_batch=2,
        bench_seq=16,
        quiet=True,
    )
    return save_tiny("bert"), opts, cfg


def test_compare_writes_results(save_tiny, tmp_path):
    model, opts, cfg = compare_setup(save_tiny, tmp_path)
    out = tmp_path / "cmp"
    rows = api.compare(model, "classification", out, opts, cfg)
    assert {r["method"] for r in rows} == set(METHODS) and len(rows) == 2 * len(METHODS)
    res = json.loads((out / "results.json").read_text())
    assert len(res["summary"]) == len(METHODS) and (out / "results.png").stat().st_size > 0
    assert "| pgb | s=0.50 | " in (out / "results.md").read_text()
    assert {p["baseline"] for p in res["paired"]} == {"kwon", "structured-fisher"}
    for r in rows:
        if r["method"] == "kwon":  # at PGB's FLOPs ratio (same seed), never above it
            pgb = next(x for x in rows if (x["method"], x["seed"]) == ("pgb", r["seed"]))
            assert r["flops_ratio_target"] == pgb["flops_ratio"] and r["flops_ratio"] <= pgb["flops_ratio"]
        else:  # never over the weight budget; under it by at most one knapsack step on these tiny shapes
            assert 0.5 <= r["sparsity_achieved"] <= 0.5 + 0.02, r["method"]


def test_compare_rows_equal_prune_runs(save_tiny, tmp_path):
    """A compare row is exactly `pgbert prune --method X` with the same seed and calibration draw, for PGB
    and Kwon et al. (at the FLOPs ratio compare matched to PGB's)."""
    model, opts, cfg = compare_setup(save_tiny, tmp_path)
    cfg.seeds, cfg.methods, cfg.finetune_epochs = 1, ("pgb", "kwon"), 0.5  # several dev checks
    rows = {r["method"]: r for r in api.compare(model, "classification", tmp_path / "cmp", opts, cfg)}
    for name, fr in (("pgb", None), ("kwon", rows["pgb"]["flops_ratio"])):
        pcfg = cfg.prune_config(name, seed=0, sparsity=0.5, flops_ratio=fr)
        _, rep = api.prune(model, "classification", None, None, opts, pcfg, compact=False)
        m = rep["metrics"]
        got = (m["masked"]["accuracy"], m["pruned"]["accuracy"], m["finetuned"]["accuracy"])
        assert got == (rows[name]["masked"], rows[name]["oneshot"], rows[name]["finetuned"]), name
        hist = rows[name]["finetune_history"]  # every dev check, so early stopping can be judged later
        assert hist == m["finetune_history"] and len(hist) >= 2
        # the kept check's score, or the one-shot model's when no check beat it (step 0)
        best = max([rows[name]["oneshot"]] + [e["accuracy"] for e in hist])
        assert rows[name]["finetuned"] == best >= rows[name]["oneshot"]
        assert rows[name]["finetune_best_steps"] == [m["finetune_best_step"]]
        assert rep["sparsity_achieved"] == rows[name]["sparsity_achieved"]


def test_compare_finetune_seeds_rerun_one_pruned_model(save_tiny, tmp_path, monkeypatch):
    """--finetune-seeds 2: each pruned model is re-finetuned twice, from the same one-shot weights, with
    seeds K and K + 1000; the first is `pgbert prune`'s re-finetune and the row's score is the mean."""
    import pgbert.comparison as cmp

    model, opts, cfg = compare_setup(save_tiny, tmp_path)
    cfg.seeds, cfg.methods, cfg.finetune_seeds = 1, ("pgb",), 2
    starts = []
    real = cmp.refinetune

    def spy(pruned, masks, dense, tokenizer, data, pcfg, start):
        starts.append((pcfg.seed, sum(float(p.detach().double().sum()) for p in pruned.parameters()), start))
        return real(pruned, masks, dense, tokenizer, data, pcfg, start)

    monkeypatch.setattr(cmp, "refinetune", spy)
    (row,) = api.compare(model, "classification", tmp_path / "cmp", opts, cfg)
    assert [s for s, _, _ in starts] == [0, 1000] and starts[0][1:] == starts[1][1:]
    _, rep = api.prune(
        model, "classification", None, None, opts, cfg.prune_config("pgb", 0, 0.5), compact=False
    )
    assert row["finetuned_runs"][0] == rep["metrics"]["finetuned"]["accuracy"]
    assert starts[0][2] == rep["metrics"]["pruned"]  # both re-finetunes start from the one-shot model's check
    assert row["finetuned"] == pytest.approx(sum(row["finetuned_runs"]) / 2)
    assert "the mean of 2 re-finetunes" in (tmp_path / "cmp" / "results.md").read_text()


def test_cli_method_names_are_the_registry():
    from pgbert.cli import METHOD_NAMES

    assert METHOD_NAMES == METHODS


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"sparsities": (0.5, 1.5)}, "in \\(0, 1\\)"),
        ({"methods": ("pgb", "cofi")}, "unknown method"),
        ({"finetune_seeds": 0}, "--finetune-seeds must be at least 1"),
    ],
)
def test_compare_bad_input_fails_before_work(save_tiny, tmp_path, kw, match):
    with pytest.raises(PgbertError, match=match):
        api.compare(tmp_path / "does-not-matter", "sst2", tmp_path / "out", None, CompareConfig(**kw))
    assert not (tmp_path / "out").exists()


def test_paired_differences_by_seed():
    """PGB minus a baseline seed by seed: mean, std, wins/ties/losses, and a paired t-test from 3 seeds."""
    acc = {"pgb": [0.80, 0.82, 0.81], "kwon": [0.78, 0.82, 0.80], "pgb-identity": [0.5, 0.5, 0.5]}
    rows = [
        {"method": m, "sparsity": 0.5, "seed": i, "oneshot": a, "finetuned": a + 0.01}
        for m, accs in acc.items()
        for i, a in enumerate(accs)
    ]
    (r,) = paired(rows)  # structured-fisher has no rows: skipped; pgb-identity is not a baseline here
    assert (r["baseline"], r["seeds"]) == ("kwon", 3)
    assert r["oneshot"] == pytest.approx(0.01) and r["oneshot_std"] == pytest.approx(0.01)
    assert (r["oneshot_wins"], r["oneshot_losses"]) == (2, 0)
    assert r["oneshot_p"] == pytest.approx(0.2254, abs=1e-3)  # t = 0.01 / (0.01 / sqrt 3), 2 dof
    assert (
        "| kwon | s=0.50 | +0.0100 ± 0.0100 (2-1-0, p 0.23) | +0.0100 ± 0.0100 (2-1-0, p 0.23) |"
        in markdown([], 0.9, "accuracy", [r])
    )
    # a compare without re-finetuning says so instead of repeating the one-shot numbers
    assert "| kwon | s=0.50 | +0.0100 ± 0.0100 (2-1-0, p 0.23) | not run |" in markdown(
        [], 0.9, "accuracy", [r], refinetuned=False
    )
    two = paired([x for x in rows if x["seed"] < 2])[0]
    assert two["seeds"] == 2 and two["oneshot_p"] is None  # too few seeds for a p-value


def test_grid_cells_say_where_pgb_leads(tmp_path):
    """benchmarks/grid.py: a cell is "yes" only if PGB's mean is at least every baseline's; a one-shot-only
    compare leaves the re-finetuned cell "not run"; the same budget and baseline in two files is an error."""
    import json

    grid = benchmark("grid")

    acc = {"pgb": [0.80, 0.82], "kwon": [0.81, 0.82], "structured-fisher": [0.70, 0.72]}
    rows = [
        {
            "method": m,
            "sparsity": 0.5,
            "seed": i,
            "oneshot": a,
            "finetuned": a + (0.03 if m == "pgb" else 0.0),
        }
        for m, accs in acc.items()
        for i, a in enumerate(accs)
    ]
    tuned, oneshot = tmp_path / "a.json", tmp_path / "b.json"
    tuned.write_text(json.dumps({"config": {"finetune_epochs": 0.25}, "rows": rows}))
    oneshot.write_text(
        json.dumps({"configs": [{"finetune_epochs": 0.25}, {"finetune_epochs": 0.0}], "rows": rows})
    )
    table = grid.grid({"t": [str(tuned)], "u": [str(oneshot)]}, [0.5, 0.88])
    assert "| t | **no** (K -0.5, S +10.0) | yes (K +2.5, S +13.0) | not run | not run |" in table
    assert "| u | **no** (K -0.5, S +10.0) | not run | not run | not run |" in table
    with pytest.raises(SystemExit, match="already given"):
        grid.cells([str(oneshot), str(oneshot)])
    # equal means whose paired difference float rounding makes -4e-17 (amazon-sentiment's 0.75 one shot)
    tie = [
        {"method": m, "sparsity": 0.75, "seed": i, "oneshot": a / 700, "finetuned": a / 700}
        for m, accs in {"pgb": [583, 577, 587], "structured-fisher": [583, 578, 586]}.items()
        for i, a in enumerate(accs)
    ]
    tied = tmp_path / "c.json"
    tied.write_text(json.dumps({"config": {"finetune_epochs": 0.25}, "rows": tie}))
    assert "| v | yes (S +0.0) | yes (S +0.0) |" in grid.grid({"v": [str(tied)]}, [0.75])


def test_grid_pools_pairs_of_compares_on_other_fine_tunes(tmp_path, monkeypatch, capsys):
    """benchmarks/grid.py --pool: a task's files at one budget are more pairs, each pair inside its file
    (seed 0 of one file is never paired with seed 0 of the other); mean, signs and p over all pairs."""
    import json

    from scipy import stats

    grid = benchmark("grid")

    def compare(path, pgb, sf):
        rows = [
            {"method": m, "sparsity": 0.88, "seed": i, "oneshot": a, "finetuned": a + 0.01}
            for m, accs in {"pgb": pgb, "structured-fisher": sf}.items()
            for i, a in enumerate(accs)
        ]
        path.write_text(json.dumps({"config": {"finetune_epochs": 0.25}, "rows": rows}))
        return str(path)

    # per-seed differences: +0.03 +0.01 -0.01 in one file, -0.02 +0.00 +0.04 in the other
    a = compare(tmp_path / "a.json", [0.83, 0.81, 0.79], [0.80, 0.80, 0.80])
    b = compare(tmp_path / "b.json", [0.70, 0.75, 0.80], [0.72, 0.75, 0.76])
    d = [0.03, 0.01, -0.01, -0.02, 0.0, 0.04]
    p = stats.ttest_1samp(d, 0.0).pvalue
    (got,) = grid.cells([a, b], pool=True)[0.88, "oneshot"]
    assert got["diff"] == pytest.approx(sum(d) / 6) and (got["wins"], got["ties"], got["losses"]) == (3, 1, 2)
    assert got["p"] == pytest.approx(p)
    expect = f"| t | yes: S +0.8 (3-1-2, p {p:.2f}) | yes: S +0.8 (3-1-2, p {p:.2f}) |"
    assert expect in grid.grid({"t": [a, b]}, [0.88], pool=True)
    with pytest.raises(SystemExit, match="already given"):  # without --pool the same cell twice is an error
        grid.cells([a, b])
    with pytest.raises(SystemExit, match="given twice"):
        grid.cells([a, a], pool=True)
    # from the command line: one line and exit code 2
    monkeypatch.setattr(sys, "argv", ["grid.py", "--pool", f"t={a},{a}"])
    with pytest.raises(SystemExit) as e:
        grid.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: --pool: a file given twice")


def test_keep_start_rescores_old_rows_with_the_one_shot_model_as_step_zero(tmp_path):
    """benchmarks/render_compare.py --keep-start (and grid.py's): each re-finetune scores at least its row's
    one-shot score, re-finetunes per mask set one by one; rows already scored so are unchanged."""
    render = benchmark("render_compare")
    grid = benchmark("grid")
    rows = [
        {"method": "pgb", "sparsity": 0.5, "seed": 0, "oneshot": 0.88, "finetuned": 0.86},
        {"method": "pgb", "sparsity": 0.5, "seed": 1, "oneshot": 0.85, "finetuned": 0.86},
        {"method": "structured-fisher", "sparsity": 0.5, "seed": 0, "oneshot": 0.85, "finetuned": 0.87},
        {"method": "structured-fisher", "sparsity": 0.5, "seed": 1, "oneshot": 0.85, "finetuned": 0.86},
        {
            "method": "kwon",
            "sparsity": 0.5,
            "seed": 0,
            "oneshot": 0.84,
            "finetuned": 0.835,
            "finetuned_runs": [0.82, 0.85],
        },
        {
            "method": "kwon",
            "sparsity": 0.5,
            "budget": "speedup",
            "target": 9.0,
            "seed": 0,
            "unreachable": "x",
        },
    ]
    got = render.keep_start_rows(rows)
    assert [r.get("finetuned") for r in got] == [0.88, 0.86, 0.87, 0.86, pytest.approx(0.845), None]
    assert got[4]["finetuned_runs"] == [0.84, 0.85] and got[5] == rows[5]
    assert render.keep_start_rows(got) == got
    new = {"method": "pgb", "sparsity": 0.75, "seed": 0, "oneshot": 0.8, "finetuned": 0.8}
    counted = render.start_kept(rows + [{**new, "finetune_best_steps": [0, 2, 0]}])
    assert counted == {"pgb": (3, 5), "structured-fisher": (0, 2), "kwon": (1, 2)}
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"config": {"finetune_epochs": 0.25}, "rows": rows[:4]}))
    assert "| t | yes (S +1.5) | **no** (S -0.5) |" in grid.grid({"t": [str(path)]}, [0.5])
    assert "| t | yes (S +1.5) | yes (S +0.5) |" in grid.grid({"t": [str(path)]}, [0.5], keep_start=True)
    assert grid.kept_starts([str(path), str(path)]) == "pgb 2 of 4, structured-fisher 0 of 4"


def test_calibration_size_table_pairs_seeds_run_at_every_size():
    """benchmarks/calibration_size.py: only seeds run at every size are paired; largest minus smallest."""
    calibration_size = benchmark("calibration_size")

    def row(n, seed, acc):
        return {
            "calib_samples": n,
            "seed": seed,
            "oneshot": acc,
            "masked": acc - 0.1,
            "dropped_sublayers": [],
        }

    rows = [row(512, 0, 0.80), row(512, 1, 0.70), row(512, 2, 0.9), row(2048, 0, 0.83), row(2048, 1, 0.72)]
    text = calibration_size.table(rows)
    assert "| 512 | 0.800 / 0.700 | 0.750 | 0.650 | 0 / 0 |" in text  # seed 2 has no 2,048 run
    assert "2,048 minus 512, paired: +2.5 points (+3.0, +2.0)" in text  # no p-value from 2 seeds
    text = calibration_size.table([*rows, row(2048, 2, 0.9)])
    assert "2,048 minus 512, paired: +1.7 points (+3.0, +2.0, +0.0; p 0.20)" in text  # t = 1.89, 2 dof


def test_calibration_size_reads_full_rows_of_an_ablation_json(tmp_path):
    """--ablation N=path takes `full`'s rows at the asked sparsity, labelled with N; anything else is refused."""
    calibration_size = benchmark("calibration_size")

    def row(variant, sparsity, seed, acc):
        return {
            "variant": variant,
            "sparsity": sparsity,
            "seed": seed,
            "masked": 0.5,
            "oneshot": acc,
            "dropped": [],
        }

    path = tmp_path / "abl.json"
    rows = [row("full", 0.88, 0, 0.8), row("full", 0.5, 0, 0.86), row("no-layer-drop", 0.88, 0, 0.7)]
    path.write_text(json.dumps({"dense": 0.87, "rows": rows}))
    (r,) = calibration_size.ablation_rows(f"2910={path}", 0.88)
    assert (r["calib_samples"], r["seed"], r["oneshot"]) == (2910, 0, 0.8)
    with pytest.raises(SystemExit, match="N=path"):
        calibration_size.ablation_rows(str(path), 0.88)
    with pytest.raises(SystemExit, match="at 0.75"):
        calibration_size.ablation_rows(f"2048={path}", 0.75)


def test_calibration_size_reads_compare_and_merged_compare_files(tmp_path):
    """--compare takes PGB's rows at the sparsity and seeds asked, labelled with the compare's --calib-samples,
    from a results.json or one merged by render_compare (a list of configs); mixed sizes are refused."""
    calibration_size = benchmark("calibration_size")

    def row(method, seed, acc):
        return {
            "method": method,
            "sparsity": 0.88,
            "seed": seed,
            "masked": 0.5,
            "oneshot": acc,
            "dropped_sublayers": [],
        }

    rows = [row("pgb", 0, 0.8), row("pgb", 1, 0.7), row("kwon", 0, 0.6), row("pgb", 2, 0.9)]
    one, merged, mixed = tmp_path / "one.json", tmp_path / "merged.json", tmp_path / "mixed.json"
    one.write_text(json.dumps({"config": {"calib_samples": 2048}, "rows": rows}))
    merged.write_text(json.dumps({"configs": [{"calib_samples": 1024}] * 2, "rows": rows}))
    mixed.write_text(json.dumps({"configs": [{"calib_samples": 512}, {"calib_samples": 2048}], "rows": rows}))
    got = calibration_size.compare_rows(str(one), 0.88, {0, 1})
    assert [(r["calib_samples"], r["seed"], r["oneshot"]) for r in got] == [(2048, 0, 0.8), (2048, 1, 0.7)]
    assert {r["calib_samples"] for r in calibration_size.compare_rows(str(merged), 0.88, {2})} == {1024}
    with pytest.raises(SystemExit, match="different --calib-samples"):
        calibration_size.compare_rows(str(mixed), 0.88, {0})


def test_render_compare_replaces_rows_only_when_asked(tmp_path, monkeypatch, capsys):
    """benchmarks/render_compare.py: a method re-run (same budget and seed) replaces the earlier row with
    --replace, and is an error without it; the other rows are kept and the replaced ones listed."""
    import json

    render_compare = benchmark("render_compare")

    def result(rows):
        return {"model": "m", "task": "t", "dense": 0.9, "config": {}, "seconds": 1.0, "rows": rows}

    old = [
        {"method": m, "sparsity": 0.88, "seed": 0, "oneshot": a, "finetuned": a}
        for m, a in (("pgb", 0.7), ("kwon", 0.6))
    ]
    new = [{"method": "pgb", "sparsity": 0.88, "seed": 0, "oneshot": 0.8, "finetuned": 0.65}]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result(old)))
    b.write_text(json.dumps(result(new)))
    with pytest.raises(SystemExit, match="more than one file"):
        render_compare.merge([str(a), str(b)])
    merged = render_compare.merge([str(a), str(b)], replace=True)
    assert sorted((r["method"], r["oneshot"]) for r in merged["rows"]) == [("kwon", 0.6), ("pgb", 0.8)]
    (rep,) = merged["replaced"]
    assert (rep["method"], rep["budget"], rep["seed"], rep["by"], rep["row"]) == (
        "pgb",
        ("sparsity", 0.88),
        0,
        str(b),
        old[0],
    )
    assert "| pgb | sparsity 0.88 | 1 | +10.0 (1-0-0) | -5.0 (0-0-1) |" in render_compare.rerun_table(merged)
    # a merged file merges again (a second re-run): its configs and sources carry over, its rows are replaced
    c = tmp_path / "c.json"
    c.write_text(json.dumps(merged))
    again = render_compare.merge([str(c), str(b)], replace=True)
    assert again["configs"] == [{}, {}, {}] and again["sources"] == [str(a), str(b), str(b)]
    assert [r["by"] for r in again["replaced"]] == [str(b)] and len(again["rows"]) == 2
    # from the command line, bad files are one line, exit code 2 and no --json written
    out = tmp_path / "merged.json"
    d = tmp_path / "d.json"
    d.write_text(json.dumps({**result(new), "config": {"finetune_seeds": 2}}))
    for args, says in (
        ([a, b], "error: the same method, budget and seed"),
        ([a, d, "--replace"], "error: the files mix re-finetunes"),
    ):
        monkeypatch.setattr(sys, "argv", ["render_compare.py", *map(str, args), "--json", str(out)])
        with pytest.raises(SystemExit) as e:
            render_compare.main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and err.startswith(says) and not out.exists()


def test_render_ablation_pairs_each_variant_with_the_reference_by_seed():
    """benchmarks/render_ablation.py: per-seed values, means and (variant - full) paired by seed, exact."""
    render_ablation = benchmark("render_ablation")

    def row(variant, seed, oneshot, finetuned):
        return {
            "variant": variant,
            "seed": seed,
            "sparsity": 0.88,
            "budget": "s=0.88",
            "masked": 0.5,
            "oneshot": oneshot,
            "finetuned": finetuned,
            "dropped": ["layer4.ffn"] * seed,
        }

    rows = [
        row("full", 0, 0.70, 0.80),
        row("full", 1, 0.72, 0.82),
        row("kd", 0, 0.70, 0.83),
        row("kd", 1, 0.72, 0.81),
    ]
    text = render_ablation.table({"dense": 0.9, "rows": rows})
    # kd minus full: one shot 0 and 0 (tied masks), re-finetuned +3 and -1 points: mean +1.0, 1-0-1
    assert (
        "| kd | 0.700 / 0.720 | 0.710 | +0.0 (0-2-0) | 0.830 / 0.810 | 0.820 | +1.0 (1-0-1) | 0.500 | 0 / 1 |"
        in text
    )
    # a variant run one shot beside re-finetuned ones: the table is one shot only
    one_shot = render_ablation.table(
        {"dense": 0.9, "rows": rows[:2] + [dict(r, finetuned=None) for r in rows[2:]]}
    )
    assert (
        "re-finetuned" not in one_shot
        and "| kd | 0.700 / 0.720 | 0.710 | +0.0 (0-2-0) | 0.500 | 0 / 1 |" in one_shot
    )


def test_render_ablation_pairs_a_variant_with_a_compares_pgb_rows(tmp_path, monkeypatch, capsys):
    """--compare: a compare's PGB rows at the ablation's budgets stand in as `full`; other budgets are left out."""
    import json

    render_ablation = benchmark("render_ablation")

    pgb = [
        {
            "method": m,
            "seed": k,
            "sparsity": s,
            "masked": 0.5,
            "oneshot": 0.70 + k / 100,
            "finetuned": 0.8,
            "dropped_sublayers": [],
        }
        for m in ("pgb", "kwon")
        for k in (0, 1)
        for s in (0.5, 0.88)
    ]
    abl = [
        {
            "variant": "compensate-2048",
            "seed": k,
            "sparsity": 0.88,
            "budget": "s=0.88",
            "masked": 0.5,
            "oneshot": o,
            "finetuned": None,
            "dropped": [],
        }
        for k, o in ((0, 0.72), (1, 0.70))
    ]
    (tmp_path / "c.json").write_text(json.dumps({"dense": 0.9, "rows": pgb}))
    (tmp_path / "a.json").write_text(json.dumps({"dense": 0.9, "rows": abl}))
    argv = ["render_ablation.py", str(tmp_path / "a.json"), "--compare", str(tmp_path / "c.json")]
    monkeypatch.setattr(sys, "argv", argv)
    render_ablation.main()
    out = capsys.readouterr().out
    # +2 and -1 points against the PGB rows 0.70 / 0.71
    assert "| compensate-2048 | 0.720 / 0.700 | 0.710 | +0.5 (1-0-1) | 0.500 | 0 / 0 |" in out
    assert "| full | 0.700 / 0.710 | 0.705 |" in out and "sparsity 0.5:" not in out
    # --baselines: a compare's other method joins as a variant; the ablation's own `full` row (seed 0) wins
    own = dict(abl[0], variant="full", oneshot=0.75)
    (tmp_path / "a.json").write_text(json.dumps({"dense": 0.9, "rows": abl + [own]}))
    monkeypatch.setattr(sys, "argv", argv + ["--baselines", "kwon"])
    render_ablation.main()
    out = capsys.readouterr().out
    assert "| full | 0.750 / 0.710 | 0.730 |" in out  # seed 1 from the compare
    assert "| kwon | 0.700 / 0.710 | 0.705 | -2.5 (0-1-1) |" in out


def test_early_stopping_pairs_the_kept_check_with_the_last_by_seed(tmp_path):
    """benchmarks/early_stopping.py: kept minus last dev check per seed, exact; rows without a history skipped."""
    import json

    early_stopping = benchmark("early_stopping")

    def row(seed, checks, method="pgb"):
        hist = [{"step": 10 * (i + 1), "accuracy": a} for i, a in enumerate(checks)]
        return {
            "method": method,
            "budget": "sparsity",
            "target": 0.88,
            "sparsity": 0.88,
            "seed": seed,
            "metric": "accuracy",
            "oneshot": 0.7,
            "finetuned": max(checks),
            "finetune_history": hist,
        }

    rows = [row(0, [0.80, 0.83, 0.81]), row(1, [0.78, 0.80]), row(2, [0.79, 0.82, 0.84])]
    rows.append({**row(0, [0.5]), "method": "kwon", "finetune_history": []})  # an old row: skipped
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"dense": 0.876, "rows": rows}))
    text = "\n".join(early_stopping.table(str(path)))
    # kept 0.83 / 0.80 / 0.84, last 0.81 / 0.80 / 0.84: differences +2, 0, 0 points, mean +0.7; seed 1 and 2
    # ended on their best check
    assert "| pgb | s=0.88 | 0.8233 | 0.8167 | +0.7 | 1-2-0, p 0.42 | 2 of 3 |" in text
    assert "kwon" not in text


def test_prune_runs_pairs_one_shot_kept_and_last_by_seed(tmp_path, monkeypatch, capsys):
    """benchmarks/prune_runs.py: each run's one-shot score and kept and last dev checks minus the reference
    run's of the same seed (the references listed in another order, of another method)."""
    import json

    prune_runs = benchmark("prune_runs")

    def run(name, method, seed, lr, oneshot, checks, kept, dropped):
        d = tmp_path / name
        d.mkdir()
        metrics = {
            "pruned": {"accuracy": oneshot},
            "finetuned": {"accuracy": kept},
            "finetune_history": [{"step": i, "accuracy": c} for i, c in enumerate(checks)],
        }
        rep = {
            "task": "rt-sentiment",
            "method": method,
            "config": {"seed": seed, "lr": lr},
            "metrics": metrics,
        }
        rep["timings_s"] = {"finetune": 10.0}
        rep["dropped_sublayers"] = dropped
        (d / "report.json").write_text(json.dumps(rep))
        return str(d)

    new = [
        run("n0", "pgb", 0, 1e-4, 0.70, [0.80, 0.84], 0.84, ["layer4.attention"]),
        run("n1", "pgb", 1, 1e-4, 0.74, [0.83, 0.81], 0.83, []),
    ]
    ref = [
        run("r1", "structured-fisher", 1, 5e-5, 0.71, [0.82, 0.82], 0.82, []),
        run("r0", "structured-fisher", 0, 5e-5, 0.72, [0.85, 0.80], 0.85, ["layer4.attention", "layer5.ffn"]),
    ]
    monkeypatch.setattr(sys, "argv", ["prune_runs.py", *new, "--paired", *ref])
    prune_runs.main()
    out = capsys.readouterr().out
    # seed 0: one shot 0.70 - 0.72, kept 0.84 - 0.85, last 0.84 - 0.80; seed 1: 0.74 - 0.71, 0.83 - 0.82,
    # 0.81 - 0.82
    assert "| pgb | 0 | 0.0001 | 0.700 | 0.800 / 0.840 | 0.840 | 0.840 | -2.0 / -1.0 / +4.0 | 1 | 10 |" in out
    assert "| pgb | 1 | 0.0001 | 0.740 | 0.830 / 0.810 | 0.830 | 0.810 | +3.0 / +1.0 / -1.0 | 0 | 10 |" in out
    assert "mean oneshot: 0.7200  minus ref +0.50 points (1-0-1)" in out
    assert "mean kept: 0.8350  minus ref +0.00 points (1-0-1)" in out
    assert "mean last: 0.8250  minus ref +1.50 points (1-0-1)" in out


def test_prune_runs_rejects_unfinished_and_one_shot_runs_with_one_line(tmp_path, monkeypatch, capsys):
    """benchmarks/prune_runs.py: a folder without report.json, or a run that was not re-finetuned, exits 2
    with one line naming the folder (no traceback)."""
    prune_runs = benchmark("prune_runs")
    one_shot = tmp_path / "oneshot"
    one_shot.mkdir()
    rep = {"task": "rt-sentiment", "metrics": {"pruned": {"accuracy": 0.8}, "finetune_history": []}}
    (one_shot / "report.json").write_text(json.dumps(rep))
    for folder, says in [
        (tmp_path / "missing", "report.json does not exist"),
        (one_shot, "not re-finetuned"),
    ]:
        monkeypatch.setattr(sys, "argv", ["prune_runs.py", str(folder)])
        with pytest.raises(SystemExit) as e:
            prune_runs.main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1
        assert err.startswith(f"error: {folder}") and says in err


def test_ablation_rows_match_pgbert_prune_and_training_only_variants_reuse_fulls_one_shot(
    tokenizer, monkeypatch
):
    """benchmarks/ablation.py: every row (one shot and re-finetuned) is what prune_model gives for that
    variant's options, also for the training-only variants, which re-finetune a copy of full's one-shot model
    instead of redoing selection and compensation."""
    import argparse
    from dataclasses import replace

    from pgbert.pipeline import prune_model

    ablation = benchmark("ablation")

    def example(r, i):
        return {"text": r["text"], "text_pair": "x", "label": 4.0 * r["label"] + (i % 7) / 7}

    rows = sentiment_rows(150)
    data = TaskData(
        get_task("stsb"),
        [example(r, i) for i, r in enumerate(rows)],
        {"dev": [example(r, i) for i, r in enumerate(rows[:40])]},
        None,
        "s",
    )
    dense = tiny_model("bert", tokenizer, num_labels=1)
    dense.config.problem_type = "regression"
    a = argparse.Namespace(
        sparsity=[0.5],
        speedup=None,
        threads=0,
        calib_samples=96,
        finetune_epochs=0.5,
        finetune_seeds=1,
        variants=["lr-1e-4", "full", "no-compensation", "no-keep-start"],
    )
    calls = []
    monkeypatch.setattr(ablation, "prune_model", lambda *args: calls.append(args[3]) or prune_model(*args))
    got = {r["variant"]: r for r in ablation.run_seed(dense, tokenizer, data, a, seed=1)}
    # two one-shot runs: full's (which lr-1e-4 and no-keep-start re-finetune a copy of) and no-compensation's
    assert [c.compensate for c in calls] == [True, False]
    for v in a.variants:
        cfg = PruneConfig(sparsity=0.5, calib_samples=96, quiet=True, seed=1, finetune_epochs=0.5)
        _, _, rep = prune_model(dense, tokenizer, data, replace(cfg, **ablation.VARIANTS[v]))
        m = rep["metrics"]
        assert (got[v]["oneshot"], got[v]["finetuned"]) == (
            m["pruned"]["pearson"],
            m["finetuned"]["pearson"],
        ), v
    assert got["lr-1e-4"]["oneshot"] == got["full"]["oneshot"] != got["no-compensation"]["oneshot"]
    # on this tiny model no re-finetune check beats the one-shot model: full keeps it, the ablation does not
    assert got["full"]["finetuned"] == got["full"]["oneshot"] > got["no-keep-start"]["finetuned"]


@pytest.mark.parametrize("method", ["pgb", "structured-fisher"])
@pytest.mark.parametrize("target", ["linear", "residual"])
def test_both_compensating_methods_fit_the_configured_target(monkeypatch, method, target):
    """PGB and structured Fisher share one compensation, so --compensation-target reaches both (structured
    Fisher always fitted `linear` before session 21)."""
    from types import SimpleNamespace

    from pgbert.config import PruneConfig
    from pgbert.methods import base, get_method

    seen = {}
    monkeypatch.setattr(base, "compensate", lambda *a, **k: seen.update(k) or {})
    monkeypatch.setattr(base, "fit_tokens", lambda cfg, calib: "all")
    cfg = PruneConfig(compensation_target=target)
    calib = SimpleNamespace(fit=[], check=[])
    get_method(method).update(None, None, base.Selection({}, {}), None, calib, cfg)
    assert seen["target"] == target


def test_refinetune_noise_splits_within_and_between_mask_sets(tmp_path):
    """benchmarks/refinetune_noise.py: the pooled within-mask-set std, the std of the mask sets' means, and
    PGB minus a baseline scored by the first re-finetune and by the mean of all, on hand-checked numbers."""
    noise = benchmark("refinetune_noise")

    def row(method, seed, runs):
        return {
            "method": method,
            "budget": "sparsity",
            "target": 0.88,
            "seed": seed,
            "metric": "accuracy",
            "oneshot": 0.80,
            "finetuned": sum(runs) / len(runs),
            "finetuned_runs": runs,
        }

    # within-set variances 1e-4, 4e-4 (pooled std sqrt(2.5e-4)); set means 0.81 and 0.83 (std sqrt(2e-4))
    pgb = [row("pgb", 0, [0.80, 0.81, 0.82]), row("pgb", 1, [0.81, 0.83, 0.85])]
    assert noise.spread(pgb) == pytest.approx((2.5e-4**0.5, 2e-4**0.5))
    base = [row("structured-fisher", 0, [0.83, 0.80, 0.80]), row("structured-fisher", 1, [0.84, 0.82, 0.80])]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"dense": 0.87, "rows": pgb + base}))
    text = "\n".join(noise.table(str(path)))
    assert (
        "| pgb | s=0.88 | 0.8000 | 0: 0.800 / 0.810 / 0.820; 1: 0.810 / 0.830 / 0.850 | 0.8200 | 1.6 | 1.4 |"
        in text
    )
    # first re-finetunes: 0.80 - 0.83, 0.81 - 0.84 -> -3.0 (0-0-2); means: 0.81 - 0.81, 0.83 - 0.82 -> +0.5
    assert "| structured-fisher | s=0.88 | +0.0 (0-2-0) | -3.0 (0-0-2) | +0.5 (1-1-0) |" in text

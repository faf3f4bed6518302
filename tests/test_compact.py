"""Compact models: equal outputs, loading anywhere, ONNX, size, bad folders."""

import pytest
import torch
from conftest import FAMILIES, fast_config, run_without_pgbert, sentiment_rows, tiny_model

from pgbert import api
from pgbert.adapters import prunable_names
from pgbert.bench import encoder_macs
from pgbert.compact.model import load, save, to_compact
from pgbert.compact.modeling_pgbert import CompactLinear
from pgbert.errors import PgbertError
from pgbert.pipeline import prune_model
from pgbert.tasks import TaskData, get_task


def data():
    ex = [{"text": r["text"], "text_pair": None, "label": r["label"]} for r in sentiment_rows(160)]
    return TaskData(get_task("sst2"), ex[:120], {"dev": ex[120:]}, ["negative", "positive"], "synthetic")


def inputs(tokenizer, family):
    batch = tokenizer(
        ["the movie was good fun", "bad", "a dull story of the film and it was the worst"],
        padding=True,
        return_tensors="pt",
    )
    if family in ("distilbert", "roberta"):
        batch.pop("token_type_ids")
    return batch


def max_diff(a, b, batch):
    with torch.no_grad():
        oa, ob = a(**batch), b(**batch)
    keys = ("start_logits", "end_logits") if hasattr(oa, "start_logits") else ("logits",)
    return max(float((getattr(oa, k) - getattr(ob, k)).abs().max()) for k in keys)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_compact_with_several_blocks_per_matrix(tokenizer, family):
    """fixed_groups=2 at 0.5: every matrix keeps both diagonal blocks of a permuted 2-grouping; the compact
    model runs them as one batched matmul and matches the masked model."""
    dense = tiny_model(family, tokenizer)
    pruned, masks, _ = prune_model(dense, tokenizer, data(), fast_config(sparsity=0.5, fixed_groups=2))
    assert all(int(m.sum(1).max()) == m.shape[1] // 2 for m in masks.values())
    compact = to_compact(pruned, masks)
    blocks = [m.shape[0] for m in compact.modules() if isinstance(m, CompactLinear)]
    assert blocks and max(blocks) == 2
    assert max_diff(pruned, compact, inputs(tokenizer, family)) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sparsity", [0.5, 0.88])
def test_compact_equals_pruned(tokenizer, family, sparsity):
    dense = tiny_model(family, tokenizer)
    pruned, masks, _ = prune_model(dense, tokenizer, data(), fast_config(sparsity=sparsity))
    compact = to_compact(pruned, masks)
    assert max_diff(pruned, compact, inputs(tokenizer, family)) <= 1e-4
    assert encoder_macs(compact, 32) < encoder_macs(dense, 32)


def random_masks(model, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        n: (torch.rand(model.get_parameter(n).shape, generator=g) < density).float()
        for layer in prunable_names(model)
        for n in layer
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_dropped_sublayers_and_arbitrary_masks(tokenizer, family):
    """Unstructured masks (every row its own pattern), empty V / FFN-in / K matrices: still exact."""
    model = tiny_model(family, tokenizer, layers=3)
    masks = random_masks(model, 0.4)
    names = prunable_names(model)
    masks[names[0][2]].zero_()  # layer 0: V empty -> attention dropped
    masks[names[1][4]].zero_()  # layer 1: FFN-in empty -> FFN dropped
    masks[names[2][1]].zero_()  # layer 2: K empty -> uniform attention
    masks[names[2][5]][:, :10] = 0  # some FFN-out columns unused
    from pgbert.training import apply_masks

    apply_masks(model, masks)
    compact = to_compact(model, masks)
    assert max_diff(model, compact, inputs(tokenizer, family)) <= 1e-4
    layers = [m for m in compact.modules() if type(m).__name__ == "CompactLayer"]
    assert layers[0].attention is None and layers[1].ffn is None and layers[2].attention.qk_width == 1


def test_layer_structure_counts_what_the_ffn_keeps():
    """Neurons live in both FFN matrices; widths are the hidden features those neurons read and write."""
    from pgbert.stages.structure import layer_structure, layout

    z = {k: torch.zeros(8, 8) for k in ("q", "k", "v", "o")}
    z["v"][:4], z["o"][:, :4] = 1, 1
    ffn_in, ffn_out = torch.zeros(6, 8), torch.zeros(8, 6)
    ffn_in[0:3, 0:5] = 1  # neurons 0-2 read features 0-4
    ffn_in[5, 7] = 1  # neuron 5 reads feature 7 but writes nothing: not live
    ffn_out[2:8, 1:4] = 1  # neurons 1-3 write features 2-7; neuron 3 reads nothing: not live
    st = layer_structure({**z, "ffn_in": ffn_in, "ffn_out": ffn_out}, num_heads=2)
    assert (st["ffn_neurons"], st["ffn_in_width"], st["ffn_out_width"]) == (2, 5, 6)
    assert (st["qk_width"], st["v_width"]) == (0, 4)
    assert layout(st, head_size=2) == "h2 f2x5x6"
    dropped = layer_structure({**z, "ffn_in": ffn_in, "ffn_out": torch.zeros(8, 6)}, num_heads=2)
    assert dropped["ffn_dropped"] and dropped["ffn_neurons"] == dropped["ffn_in_width"] == 0


def test_qa_head_compacts(tokenizer):
    model = tiny_model("bert", tokenizer, qa=True)
    masks = random_masks(model, 0.3)
    from pgbert.training import apply_masks

    apply_masks(model, masks)
    assert max_diff(model, to_compact(model, masks), inputs(tokenizer, "bert")) <= 1e-4


def test_save_load_size_and_remote_code_without_pgbert(tokenizer, tmp_path):
    dense = tiny_model("bert", tokenizer, layers=2)
    dense.save_pretrained(tmp_path / "dense")
    masks = {n: torch.zeros_like(dense.get_parameter(n)) for layer in prunable_names(dense) for n in layer}
    for n in masks:  # keep one 32-row block per matrix (~1/4 or 1/2 of each)
        masks[n][:32, :32] = 1
    from pgbert.training import apply_masks

    apply_masks(dense, masks)
    compact = to_compact(dense, masks)
    save(compact, tmp_path / "c", tokenizer)
    reloaded = load(tmp_path / "c")
    batch = inputs(tokenizer, "bert")
    assert max_diff(compact, reloaded, batch) == 0.0
    enc_dense = sum(dense.get_parameter(n).numel() for n in masks) * 4
    size_c = (tmp_path / "c" / "model.safetensors").stat().st_size
    size_d = (tmp_path / "dense" / "model.safetensors").stat().st_size
    kept = sum(int(m.sum()) for m in masks.values()) * 4
    assert (
        size_c < size_d - (enc_dense - kept) + 64 * 1024
    )  # shrinks by the dropped weights (index tensors aside)
    with torch.no_grad():
        expected = compact(**batch).logits
    code = f"""
        import json
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        m = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "c")!r}, trust_remote_code=True)
        t = AutoTokenizer.from_pretrained({str(tmp_path / "c")!r}, trust_remote_code=True)
        b = t(["the movie was good fun", "bad", "a dull story of the film and it was the worst"], padding=True,
              return_tensors="pt")
        print(json.dumps(m(**b).logits.tolist()))
    """
    out = run_without_pgbert(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = torch.tensor(__import__("json").loads(out.stdout.strip().splitlines()[-1]))
    assert torch.allclose(got, expected, atol=1e-5)


def test_onnx_export_matches(tokenizer, tmp_path):
    model = tiny_model("roberta", tokenizer)
    masks = random_masks(model, 0.5)
    from pgbert.training import apply_masks

    apply_masks(model, masks)
    save(to_compact(model, masks), tmp_path / "c", tokenizer)
    res = api.export(tmp_path / "c", tmp_path / "m.onnx")
    assert res["max_abs_diff_vs_torch"] < 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp*"))


def test_bad_folders(tokenizer, tmp_path):
    with pytest.raises(PgbertError, match="no config.json"):
        load(tmp_path)
    model = tiny_model("bert", tokenizer)
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(PgbertError, match="not a pgbert compact model"):
        load(tmp_path / "plain")
    masks = random_masks(model, 0.5)
    save(to_compact(model, masks), tmp_path / "c", tokenizer)
    w = tmp_path / "c" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(PgbertError, match="corrupt or truncated"):
        load(tmp_path / "c")
    with pytest.raises(PgbertError, match="exceeds the model's 160 positions"):
        api.bench(tmp_path / "plain", seq_len=512)


def test_bench_reports_speedup_fields(tokenizer, tmp_path):
    model = tiny_model("bert", tokenizer)
    model.save_pretrained(tmp_path / "d")
    masks = {n: torch.zeros_like(model.get_parameter(n)) for layer in prunable_names(model) for n in layer}
    for m in masks.values():
        m[:16, :16] = 1
    from pgbert.training import apply_masks

    apply_masks(model, masks)
    save(to_compact(model, masks), tmp_path / "c", tokenizer)
    res = api.bench(tmp_path / "c", tmp_path / "d", batch_size=2, seq_len=16, repeats=3)
    assert res["model"]["rounds"] == res["against"]["rounds"] == 5 and res["spread"] >= 0
    # every linear keeps a 16 x 16 block: 6 x 256 of the layer's 6 x 64 x 128 / 3 weights, plus attention
    macs_dense = 2 * (16 * (4 * 64 * 64 + 2 * 64 * 128) + 16**2 * 2 * 64)
    macs_compact = 2 * (16 * 6 * 16 * 16 + 16**2 * 2 * 16)
    assert (res["against"]["encoder_macs"], res["model"]["encoder_macs"]) == (macs_dense, macs_compact)
    assert res["flops_limit_speedup"] == pytest.approx(macs_dense / macs_compact)
    assert res["environment"]["dtype"] == "float32"

"""Deploy-ready output (issue 13): compact folders load without prompts or pgbert, pruning writes a card and
no dense copy, int8 ONNX export, and bad input as one line."""

import collections
import json
import os
import pty
import subprocess
import sys

import onnx
import pytest
import torch
from conftest import fast_config, run_without_pgbert, sentiment_rows, tiny_model, write_jsonl

from pgbert import api
from pgbert.adapters import prunable_names
from pgbert.cli import main
from pgbert.compact.model import save, to_compact
from pgbert.compact.modeling_pgbert import CompactLinear
from pgbert.demo_run import DEMO_METHODS, DEMO_SPARSITIES
from pgbert.tasks import DataOptions
from pgbert.training import apply_masks


def make_compact(tokenizer, folder, num_labels=2):
    """A tiny BERT with one 32 x 32 block kept per matrix, saved as a compact folder."""
    model = tiny_model("bert", tokenizer, num_labels=num_labels)
    masks = {n: torch.zeros_like(model.get_parameter(n)) for layer in prunable_names(model) for n in layer}
    for m in masks.values():
        m[:32, :32] = 1
    apply_masks(model, masks)
    compact = to_compact(model, masks)
    save(compact, folder, tokenizer)
    return compact


@pytest.fixture
def files(tmp_path):
    return write_jsonl(tmp_path / "tr.jsonl", sentiment_rows(60)), write_jsonl(
        tmp_path / "dev.jsonl", sentiment_rows(40, seed=1)
    )


def prune_fast(dense, files, out, **kw) -> dict:
    opts = DataOptions(train_file=str(files[0]), dev_file=str(files[1]))
    return api.prune(dense, "classification", 0.5, out, opts, fast_config(), **kw)[1]


def data_args(files):
    return ["--train-file", str(files[0]), "--dev-file", str(files[1])]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr()


def one_line_error(code, captured, text):
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and text in err[0], err


def test_cli_on_a_compact_folder_never_asks_to_run_remote_code(tokenizer, tmp_path, files):
    """A terminal on stdin is where transformers prompts ("contains custom code ... [y/N]"); pgbert loads its
    own folders with its own classes, and --json output stays valid JSON."""
    make_compact(tokenizer, tmp_path / "c")
    primary, secondary = pty.openpty()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pgbert", "evaluate", str(tmp_path / "c"), *data_args(files), "--json"],
            stdin=secondary,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    finally:
        os.close(primary)
        os.close(secondary)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "custom code" not in out.stdout + out.stderr
    metrics = json.loads(out.stdout)
    assert 0 <= metrics["dev"]["accuracy"] <= 1


def test_folders_saved_from_every_load_path_load_where_pgbert_is_missing(tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    compact = make_compact(tokenizer, tmp_path / "c")
    api.load(tmp_path / "c").save_pretrained(tmp_path / "from_pgbert_load")
    remote = AutoModelForSequenceClassification.from_pretrained(tmp_path / "c", trust_remote_code=True)
    remote.save_pretrained(tmp_path / "from_remote_code")
    ids = torch.tensor([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = compact(input_ids=ids, attention_mask=mask).logits
    code = f"""
        import json
        import torch
        from transformers import AutoModelForSequenceClassification
        ids = torch.tensor({ids.tolist()})
        out = {{}}
        for name in ("from_pgbert_load", "from_remote_code"):
            m = AutoModelForSequenceClassification.from_pretrained(name, trust_remote_code=True)
            out[name] = m(input_ids=ids, attention_mask=(ids != 0).long()).logits.tolist()
        print(json.dumps(out))
    """
    out = run_without_pgbert(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for name, logits in got.items():
        assert torch.allclose(torch.tensor(logits), expected, atol=1e-5), name
    clf = pipeline("text-classification", model=str(tmp_path / "c"), trust_remote_code=True)
    assert clf("a good film")[0]["label"] in ("LABEL_0", "LABEL_1")


def test_prune_writes_compact_model_and_card_and_the_masked_copy_only_on_request(
    save_tiny, tmp_path, files, tokenizer
):
    dense = save_tiny()
    out, masked_out = tmp_path / "out", tmp_path / "with_masked"
    report = prune_fast(dense, files, out)
    assert not (out / "masked").exists()
    weights = (out / "model.safetensors").stat().st_size
    assert weights < (dense / "model.safetensors").stat().st_size
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification\n")
    assert f"sparsity: {report['sparsity_achieved']:.3f}" in card
    assert f"{report['compact']['speedup']:.2f}x" in card
    assert f"accuracy {report['metrics']['dense']['accuracy']:.4f}" in card
    prune_fast(dense, files, masked_out, save_masked=True)
    assert (masked_out / "masked" / "masks.safetensors").is_file()
    api.compact(masked_out, tmp_path / "recompact")
    a, b = api.load(masked_out), api.load(tmp_path / "recompact")
    ids = torch.tensor([[2, 40, 41, 3]])
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)


def test_int8_export_quantizes_every_compact_linear_and_keeps_accuracy(tokenizer, tmp_path, files):
    """Weights above onnxscript's default folding size (8,192 elements) reach ONNX Runtime's quantizer
    as initializers too: every linear becomes an integer matmul."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=160,
    )
    model = BertForSequenceClassification(cfg).eval()
    masks = {n: torch.zeros_like(model.get_parameter(n)) for layer in prunable_names(model) for n in layer}
    for m in masks.values():
        m[:96, :] = 1  # 96 x 128 and more: above the default folding size
    apply_masks(model, masks)
    compact = to_compact(model, masks)
    save(compact, tmp_path / "c", tokenizer)
    opts = DataOptions(train_file=str(files[0]), dev_file=str(files[1]))
    res = api.export(tmp_path / "c", tmp_path / "m8.onnx", int8=True, task="classification", data=opts)
    ops = collections.Counter(n.op_type for n in onnx.load(tmp_path / "m8.onnx").graph.node)
    linears = sum(isinstance(m, CompactLinear) for m in compact.modules())
    assert ops["MatMulInteger"] == linears + 2, ops  # and the pooler and the classifier
    fp32, int8 = res["metrics"]["torch"]["dev"], res["metrics"]["onnx_int8"]["dev"]
    assert abs(fp32["accuracy"] - int8["accuracy"]) <= 0.05
    assert abs(fp32["loss"] - int8["loss"]) <= 0.02
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_export_quiet_prints_no_exporter_warnings(tokenizer, tmp_path, capfd):
    make_compact(tokenizer, tmp_path / "c")
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path / "c"), "--onnx", str(tmp_path / "m.onnx"), "--quiet"])
    captured = capfd.readouterr()
    assert exc.value.code == 0
    assert json.loads(captured.out)["max_abs_diff_vs_torch"] < 1e-4
    assert "Warning" not in captured.err and "torchvision" not in captured.err, captured.err


def test_malformed_jsonl_names_file_and_line(save_tiny, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": 1}\n{"text": "bad", label: 0}\n')
    code, captured = run_cli(
        ["evaluate", str(save_tiny()), "--train-file", str(bad), "--dev-file", str(bad)], capsys
    )
    one_line_error(code, captured, f"{bad}: invalid JSON at line 2, column 17")


@pytest.mark.parametrize("hub_id", ["someone/some-model", "bert-base-uncased"])
def test_hub_id_offline_is_one_line(hub_id, tmp_path, files, capsys):
    code, captured = run_cli(["evaluate", hub_id, *data_args(files)], capsys)
    one_line_error(code, captured, f"model '{hub_id}' is not a local folder and could not be fetched")


def test_compact_folder_given_where_a_dense_model_is_needed(tokenizer, tmp_path, files, capsys):
    make_compact(tokenizer, tmp_path / "c")
    out = tmp_path / "out"
    code, captured = run_cli(
        ["prune", str(tmp_path / "c"), *data_args(files), "--sparsity", "0.5", "--output", str(out)], capsys
    )
    one_line_error(code, captured, "is a compact pgbert model (already pruned)")
    assert not out.exists()


def test_evaluate_compact_with_another_label_count(tokenizer, tmp_path, capsys):
    make_compact(tokenizer, tmp_path / "c")
    three = write_jsonl(tmp_path / "three.jsonl", sentiment_rows(30, labels=(0, 1, 2)))
    code, captured = run_cli(
        ["evaluate", str(tmp_path / "c"), "--train-file", str(three), "--dev-file", str(three)], capsys
    )
    one_line_error(code, captured, "has 2 output labels but task 'classification' has 3")


def test_untrained_classifier_head_is_refused(tokenizer, tmp_path, files, capsys):
    from transformers import AutoModel

    tiny_model("bert", tokenizer).base_model.save_pretrained(tmp_path / "encoder")  # no head in the file
    tokenizer.save_pretrained(tmp_path / "encoder")
    assert isinstance(AutoModel.from_pretrained(tmp_path / "encoder"), torch.nn.Module)
    out = tmp_path / "out"
    code, captured = run_cli(
        ["prune", str(tmp_path / "encoder"), *data_args(files), "--sparsity", "0.5", "--output", str(out)],
        capsys,
    )
    one_line_error(code, captured, "has no trained task head (transformers initialised classifier.")
    assert not out.exists()


def test_output_to_the_current_folder_is_refused_and_leaves_nothing(
    save_tiny, tmp_path, files, capsys, monkeypatch
):
    dense = save_tiny()
    capsys.readouterr()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", ".."):
        args = ["prune", str(dense), *data_args(files), "--sparsity", "0.5", "--output", out, "--overwrite"]
        code, captured = run_cli(args, capsys)
        one_line_error(code, captured, "is the current folder or holds it")
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "dev.jsonl",
        "model",
        "tr.jsonl",
        "work",
    ]


def test_removed_sublayers_are_named_and_a_lost_encoder_is_a_loud_warning():
    report = {"layers": [{}, {}], "dropped_sublayers": ["layer1.ffn"]}
    api._warn_drops(report)
    assert report["warnings"] == ["removed 1 of 4 sublayers: layer1.ffn"]
    everything = ["layer0.attention", "layer0.ffn", "layer1.attention", "layer1.ffn"]
    report = {"layers": [{}, {}], "dropped_sublayers": everything}
    api._warn_drops(report)
    assert report["warnings"][0].startswith("every encoder sublayer (4) was removed")


def test_demo_says_what_it_will_do_then_ends_with_the_table_and_plot(tmp_path, monkeypatch, capsys):
    """The demo's plan (with the expected MISSING report explained) comes first, one bar tracks the whole
    run, and it ends with the table and the plot's path. Fine-tuning and comparing are stubbed here."""
    monkeypatch.setattr(api.Path, "home", lambda: tmp_path)
    seen = {"steps": 0, "rows": []}

    def fake_finetune(model, task, output, data, cfg, overwrite=False, progress=None):
        assert (model, task, cfg.epochs) == ("minilm", "rt-sentiment", 1)
        for _ in range(300):
            progress(1)
            seen["steps"] += 1

    def fake_compare(model, task, output, data, cfg, overwrite=False, on_row=None):
        assert cfg.methods == DEMO_METHODS and cfg.sparsities == DEMO_SPARSITIES
        for s in cfg.sparsities:
            for m in cfg.methods:
                row = {"method": m, "sparsity": s, "oneshot": 0.8, "finetuned": 0.85, "dense": 0.87}
                on_row({**row, "speedup": 2.0})
                seen["rows"].append(m)
        api.Path(output).mkdir()
        (api.Path(output) / "results.md").write_text("| the table |\n")

    monkeypatch.setattr(api, "finetune", fake_finetune)
    monkeypatch.setattr(api, "compare", fake_compare)
    api.demo(tmp_path / "demo")
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("pgbert demo:") and "MISSING" in out[1] and "expected" in out[1]
    # 300 steps at 1.4 s, two sparsities of PGB 200 s, structured Fisher 165 s, Kwon et al. 160 s: 24.5 min
    assert "About 24 minutes on 2 CPU cores" in "\n".join(out[:5])
    assert out[-2:] == ["| the table |", f"plot: {tmp_path / 'demo' / 'results.png'}"]
    assert seen["steps"] == 300 and len(seen["rows"]) == 6


@pytest.mark.parametrize("best_step", [0, 4])
def test_card_says_which_model_it_is_when_re_finetuning_kept_the_one_shot_model(best_step):
    from pgbert.card import model_card

    report = {
        "model": "/nonexistent/dense",
        "task": "rt-sentiment",
        "method": "pgb",
        "sparsity_achieved": 0.5,
        "sparsity_target": 0.5,
        "flops_ratio": 0.5,
        "flops_seq_len": 128,
        "metrics": {
            "dense": {"accuracy": 0.871},
            "pruned": {"accuracy": 0.874},
            "finetuned": {"accuracy": 0.874 if best_step == 0 else 0.876},
            "finetune_best_step": best_step,
        },
    }
    card = model_card(report, "classification")
    if best_step == 0:
        assert (
            "| pruned, not re-finetuned (this model: re-finetuning did not beat it on dev) | accuracy 0.8740 |"
            in card
        )
        assert "re-finetuned (this model)" not in card
    else:
        assert "| pruned, before re-finetuning | accuracy 0.8740 |" in card
        assert "| pruned and re-finetuned (this model) | accuracy 0.8760 |" in card

"""Bad input: one line naming the problem, exit code 2, no run folder left behind."""

import json

import pytest
from conftest import sentiment_rows, write_jsonl

from pgbert.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, err


@pytest.fixture
def files(tmp_path):
    tr = write_jsonl(tmp_path / "tr.jsonl", sentiment_rows(40))
    return tr


def finetune_cli(model, out, train, capsys, *extra, dev=None):
    args = [
        "finetune",
        str(model),
        "--task",
        "classification",
        "--train-file",
        str(train),
        "--dev-file",
        str(dev or train),
        "--output",
        str(out),
        "--quiet",
        *extra,
    ]
    return run_cli(args, capsys)


def assert_error(code, err, text, out=None):
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], err
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_missing_model_path(tmp_path, files, capsys):
    out = tmp_path / "out"
    code, err = finetune_cli(tmp_path / "nope", out, files, capsys)
    assert_error(code, err, "does not exist", out)


def test_non_bert_family_model(tmp_path, files, capsys):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    out = tmp_path / "out"
    code, err = finetune_cli(tmp_path / "gpt", out, files, capsys)
    assert_error(code, err, "supported: bert, distilbert, electra, roberta", out)


def test_unknown_task(save_tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(
        ["finetune", str(save_tiny()), "--task", "sst5", "--output", str(out), "--quiet"], capsys
    )
    assert_error(code, err, "unknown task 'sst5'", out)


def test_missing_column(save_tiny, tmp_path, files, capsys):
    out = tmp_path / "out"
    code, err = finetune_cli(save_tiny(), out, files, capsys, "--text-column", "review")
    assert_error(code, err, "column 'review' missing", out)


def test_empty_split(save_tiny, tmp_path, files, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "out"
    code, err = finetune_cli(save_tiny(), out, files, capsys, dev=empty)
    assert_error(code, err, "empty", out)


def test_dev_label_unseen_in_train(save_tiny, tmp_path, files, capsys):
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "x", "label": 7}])
    out = tmp_path / "out"
    code, err = finetune_cli(save_tiny(), out, files, capsys, dev=dev)
    assert_error(code, err, "label '7' in the dev split", out)


def test_existing_output_needs_overwrite(save_tiny, tmp_path, files, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, err = finetune_cli(save_tiny(), out, files, capsys)
    assert_error(code, err, "already exists")
    assert (out / "mine.txt").read_text() == "keep"


def test_finetune_then_evaluate_cli(save_tiny, tmp_path, files, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "finetune",
                str(save_tiny()),
                "--task",
                "classification",
                "--train-file",
                str(files),
                "--dev-file",
                str(files),
                "--output",
                str(out),
                "--max-steps",
                "2",
                "--quiet",
            ]
        )
    assert exc.value.code == 0 and (out / "model.safetensors").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "evaluate",
                str(out),
                "--task",
                "classification",
                "--train-file",
                str(files),
                "--dev-file",
                str(files),
                "--json",
                "--quiet",
            ]
        )
    assert exc.value.code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "extra,text",
    [
        (
            ["--method", "cofi", "--sparsity", "0.5"],
            "unknown method 'cofi'; choose from pgb, pgb-identity, kwon",
        ),
        (["--flops-ratio", "0.5"], "method pgb prunes to a weight budget: give --sparsity"),
        (["--method", "kwon"], "give a budget: --sparsity S"),
        (["--method", "kwon", "--flops-ratio", "1.2"], "--flops-ratio must be in (0, 1)"),
        (["--sparsity", "0.5", "--importance-steps", "0"], "--importance-steps must be at least 1, got 0"),
        (["--sparsity", "0.5", "--compensation-damp", "0"], "--compensation-damp must be above 0, got 0.0"),
    ],
)
def test_prune_method_and_budget_errors(save_tiny, tmp_path, files, capsys, extra, text):
    """Method and budget are checked before any work: one line, exit 2, no output folder."""
    out = tmp_path / "out"
    args = ["prune", str(save_tiny()), "--task", "classification", "--train-file", str(files)]
    capsys.readouterr()  # saving the model may print progress; only the CLI's output is checked
    code, err = run_cli([*args, "--dev-file", str(files), "--output", str(out), "--quiet", *extra], capsys)
    assert_error(code, err, text, out)


def test_prune_kwon_cli_writes_run_folder(save_tiny, tmp_path, files, capsys):
    """`pgbert prune --method kwon` goes through the same path: compact model, masks (asked for) and report."""
    out = tmp_path / "out"
    args = ["prune", str(save_tiny()), "--task", "classification", "--train-file", str(files)]
    args += [
        "--dev-file",
        str(files),
        "--output",
        str(out),
        "--quiet",
        "--method",
        "kwon",
        "--flops-ratio",
        "0.5",
        "--save-masked",
    ]
    args += ["--calib-samples", "32", "--finetune-epochs", "0", "--batch-size", "16"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["method"] == "kwon" and rep["calibration"]["sampling"] == "with-replacement"
    assert rep["flops_ratio_at_dev_seq_len"] <= 0.5 and "tuned" in rep["compensation"]
    assert (out / "model.safetensors").is_file() and (out / "masked" / "masks.safetensors").is_file()


def test_help_and_version_do_not_import_torch():
    """`pgbert --help` / `--version` parse arguments before torch and transformers are imported."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom pgbert.cli import build_parser\nbuild_parser()\n"
        "import pgbert\nprint(pgbert.__version__, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0.1.0", "False", "False"]
    ver = subprocess.run([sys.executable, "-m", "pgbert", "--version"], capture_output=True, text=True)
    assert ver.returncode == 0 and ver.stdout.strip() == "pgbert 0.1.0"


def test_help_states_each_default_once():
    """Every subcommand's --help: a flag's default appears once, never as '(default: None)'."""
    from pgbert.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert "(default: None)" not in p.format_help(), name
        fmt = p.formatter_class(prog=p.prog)
        for action in p._actions:  # a help that states its default gets no second one
            assert (fmt._get_help_string(action) or "").count("default:") <= 1, (name, action.dest)
    compare = " ".join(sub.choices["compare"].format_help().split())
    assert "(default: [0.5, 0.75, 0.88])" in compare and "draw (default: 3)" in compare


def test_prune_flags_default_to_prune_configs_defaults():
    """`pgbert prune` and the Python API (PruneConfig) hold each default in two places; they must agree (the
    compensation target's default changed in session 21 in both)."""
    import dataclasses

    from pgbert.cli import build_parser
    from pgbert.config import PruneConfig

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    flags = {a.dest: a.default for a in sub.choices["prune"]._actions if a.dest in fields}
    assert {"compensation_target", "drop_check_se", "calib_samples", "finetune_epochs", "lr"} <= flags.keys()
    assert flags == {k: getattr(PruneConfig(), k) for k in flags}


def test_task_defaults_to_classification_with_files_and_validation_file_alias(capsys):
    from pgbert.cli import build_parser

    a = build_parser().parse_args(["evaluate", "m", "--train-file", "t.csv", "--validation-file", "d.csv"])
    assert (a.task, a.dev_file) == (None, "d.csv")  # run() then sets classification
    code, err = run_cli(["evaluate", "m", "--quiet"], capsys)
    assert_error(code, err, "give --task")


@pytest.mark.parametrize(
    "flags,expect",
    [
        (
            [],
            {
                "importance_steps": 1,
                "drop_check": True,
                "compensation_target": "residual",
                "compensation_damp": 0.01,
                "keep_start": True,
            },
        ),
        (
            ["--importance-steps", "2", "--no-drop-check", "--compensation-target", "linear"]
            + ["--compensation-damp", "0.1", "--no-keep-start"],
            {
                "importance_steps": 2,
                "drop_check": False,
                "compensation_target": "linear",
                "compensation_damp": 0.1,
                "keep_start": False,
            },
        ),
    ],
)
def test_prune_cli_pgb_switches_reach_the_run(save_tiny, tmp_path, files, capsys, flags, expect):
    """PGB's switches (and their defaults) are what the run used: report.json's config and its steps."""
    out = tmp_path / "out"
    args = ["prune", str(save_tiny()), "--task", "classification", "--train-file", str(files), "--dev-file"]
    args += [str(files), "--output", str(out), "--quiet", "--sparsity", "0.5", "--calib-samples", "32"]
    args += ["--finetune-epochs", "0", "--batch-size", "16", *flags]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    rep = json.loads((out / "report.json").read_text())
    assert {k: rep["config"][k] for k in expect} == expect
    assert len(rep["importance_steps"]) == expect["importance_steps"] - 1


@pytest.mark.parametrize("stop, code, text", [("ctrl-c", 130, "interrupted"), ("kill", 143, "terminated")])
def test_an_interrupt_while_writing_leaves_nothing_behind(
    save_tiny, tmp_path, files, capsys, monkeypatch, stop, code, text
):
    import os
    import signal

    from pgbert import card

    def stopped(*a, **k):  # the run folder is half written when the run is stopped
        if stop == "kill":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(card, "model_card", stopped)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    model = save_tiny()
    capsys.readouterr()  # saving the fixture's model prints a progress bar
    args = ["prune", str(model), "--task", "classification", "--train-file", str(files)]
    args += ["--dev-file", str(files), "--output", str(out), "--quiet", "--importance", "magnitude"]
    args += ["--sparsity", "0.5", "--finetune-epochs", "0", "--calib-samples", "32", "--no-compact"]
    assert run_cli(args, capsys) == (code, [f"error: {text}"])
    assert [p.name for p in tmp_path.iterdir() if "out" in p.name] == []  # no folder, no hidden temp folder
    assert signal.getsignal(signal.SIGTERM) is before

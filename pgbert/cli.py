"""Command line: thin argument parsing over pgbert.api. Bad input exits with code 2 and one line."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from .errors import PgbertError

# The registry's names, listed here so that --help needs no torch import (tests check they agree).
METHOD_NAMES = (
    "pgb",
    "pgb-identity",
    "kwon",
    "structured-fisher",
    "unstructured-magnitude",
    "unstructured-fisher",
)


def _data_args(p: argparse.ArgumentParser, task_help: str = "") -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--task",
        help=(task_help + "; " if task_help else "")
        + "glue task (sst2, mnli, ...), squad, rt-sentiment, classification or regression "
        "(default: classification when --train-file is given)",
    )
    g.add_argument("--data-dir", help="GLUE-format TSV folder (or folder with train-v1.1.json/dev-v1.1.json)")
    g.add_argument("--train-file", help="CSV/TSV/JSON/JSONL (or SQuAD JSON) training file")
    g.add_argument(
        "--dev-file", "--validation-file", dest="dev_file", help="CSV/TSV/JSON/JSONL (or SQuAD JSON) dev file"
    )
    g.add_argument(
        "--text-column", help="column with the text (default: text; the GLUE column for GLUE tasks)"
    )
    g.add_argument("--text-pair-column", help="column with the second text of a pair task (e.g. sentence2)")
    g.add_argument("--label-column", help="column with the label (default: label); string labels are fine")
    g.add_argument("--max-train-samples", type=int, help="use only the first N training examples")
    g.add_argument("--max-dev-samples", type=int, help="use only the first N dev examples")
    g.add_argument("--max-seq-length", type=int, default=128, help="longer inputs are truncated")


def _train_args(p: argparse.ArgumentParser, epochs: float) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=epochs, help="passes over the training split")
    g.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (linear warm-up and decay)")
    g.add_argument("--batch-size", type=int, default=32, help="training batch size")
    g.add_argument("--seed", type=int, default=42, help="data order and initialisation of the head")
    g.add_argument(
        "--eval-steps",
        type=int,
        help="evaluate on the dev split every N steps (default: once per epoch); the best check is kept "
        "(main metric, ties to the lower dev loss)",
    )
    g.add_argument("--patience", type=int)
    g.add_argument("--max-steps", type=int)


def _setting_args(g, batch: str, seq: str) -> None:
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--threads", type=int, default=0, help="CPU threads (0: all of torch's)")
    g.add_argument(batch, type=int, default=32, help="batch size the model will serve")
    g.add_argument(seq, type=int, default=128, help="sequence length the model will serve")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")


def _data_options(a):
    from .tasks import DataOptions

    return DataOptions(
        data_dir=a.data_dir,
        train_file=a.train_file,
        dev_file=a.dev_file,
        text_column=a.text_column,
        text_pair_column=a.text_pair_column,
        label_column=a.label_column,
        max_train_samples=a.max_train_samples,
        max_dev_samples=a.max_dev_samples,
    )


def _train_config(a, **kw):
    from .training import TrainConfig

    return TrainConfig(
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        seed=a.seed,
        eval_steps=a.eval_steps,
        patience=a.patience,
        max_steps=a.max_steps,
        max_seq_length=a.max_seq_length,
        quiet=a.quiet,
        **kw,
    )


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default once: not for flags without one, nor where the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="pgbert", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pgbert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        formatter_class=_Help,
        name="finetune",
        help="fine-tune a BERT-family model on a task",
    )
    p.add_argument("model", help="model folder, hub id, or 'minilm' (the bundled all-MiniLM-L6-v2)")
    _data_args(p)
    _train_args(p, epochs=3.0)
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        formatter_class=_Help,
        name="evaluate",
        help="dev metrics of a fine-tuned or compact model",
    )
    p.add_argument("model")
    _data_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        formatter_class=_Help,
        name="prune",
        help="prune a fine-tuned model (PGB by default) and export the compact model",
    )
    p.add_argument("model")
    _data_args(p)
    p.add_argument("--method", default="pgb", help=f"one of {', '.join(METHOD_NAMES)}")
    p.add_argument("--sparsity", type=float, help="pruned fraction of encoder linear weights")
    p.add_argument(
        "--flops-ratio",
        type=float,
        help="kept fraction of encoder MACs at the dev set's average length (kwon; there --sparsity S means 1-S)",
    )
    g = p.add_argument_group(
        "latency budget (pgb, structured-fisher, kwon): measured at the deployment setting, profiled once"
    )
    g.add_argument(
        "--speedup", type=float, help="times faster than the dense model (alone or with --sparsity)"
    )
    g.add_argument("--latency-ms", type=float, help="at most this many ms per forward pass")
    _setting_args(g, batch="--target-batch-size", seq="--target-seq-len")
    p.add_argument("--calib-samples", type=int, default=2048, help="training examples drawn to score weights")
    p.add_argument(
        "--compensation-samples", type=int, help="of those, used by compensation (default: all of them)"
    )
    p.add_argument("--importance", choices=["fisher", "magnitude"], default="fisher", help="weight scores")
    p.add_argument(
        "--no-permutation", action="store_true", help="identity grouping: the same as --method pgb-identity"
    )
    p.add_argument(
        "--no-compensation",
        action="store_true",
        help="skip least-squares compensation (pgb, structured-fisher; ablation)",
    )
    p.add_argument("--no-layer-drop", action="store_true", help="every matrix keeps at least one block")
    p.add_argument(
        "--no-drop-check",
        action="store_true",
        help="drop sublayers where the knapsack's estimate says so, without measuring (ablation)",
    )
    p.add_argument(
        "--drop-check-se",
        type=float,
        default=2.0,
        help="a sublayer drops only if dropping lowers the held-out loss by this many standard errors "
        "(0: by any amount)",
    )
    p.add_argument(
        "--importance-steps",
        type=int,
        default=1,
        help="T > 1: re-score the partly pruned, compensated model T-1 times on the way to the budget "
        "(1: one estimate, on the dense model)",
    )
    p.add_argument(
        "--compensation-target",
        choices=["linear", "residual"],
        default="residual",
        help="residual: O and FFN-out also absorb the residual stream's error (what enters the LayerNorm); "
        "linear: each linear fits its own dense output",
    )
    p.add_argument(
        "--compensation-tokens",
        choices=["all", "head"],
        default="all",
        help="head: the last layer's Q, O and FFN fit only the first token, the one a classification or "
        "regression head reads (extractive QA fits every token); all: every token",
    )
    p.add_argument(
        "--compensation-damp",
        type=float,
        default=1e-2,
        help="ridge weight pulling each refit toward the dense weights, times the mean squared input",
    )
    p.add_argument(
        "--attention",
        choices=["heads", "blocks"],
        default="heads",
        help="heads: keep whole attention heads (default); blocks: Q/K and V/O blocks of dims (ablation)",
    )
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="0 skips re-finetuning")
    p.add_argument("--kd", action="store_true", help="distil from the dense model while re-finetuning")
    _keep_start_arg(p)
    p.add_argument(
        "--lr",
        type=float,
        help="re-finetuning's peak learning rate (default: the one MODEL was fine-tuned with where `pgbert "
        "finetune` recorded it in MODEL/run_config.json, but at least 5e-5; else 5e-5)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="re-finetuning's batch size")
    p.add_argument("--seed", type=int, default=0, help="calibration draw and re-finetuning's data order")
    p.add_argument("--no-compact", action="store_true", help="save only the masked model")
    p.add_argument(
        "--save-masked",
        action="store_true",
        help="also save DIR/masked: the masked model (dense shapes) and its masks, for `pgbert compact`",
    )
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        formatter_class=_Help,
        name="compact",
        help="turn a pruned (masked) model folder into a compact model",
    )
    p.add_argument("pruned_dir")
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        formatter_class=_Help,
        name="export",
        help="export a model folder to ONNX and check it in onnxruntime",
    )
    p.add_argument("model_dir")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument(
        "--int8",
        action="store_true",
        help="ONNX Runtime dynamic int8 quantization of the linears (give a task to check the accuracy)",
    )
    _data_args(p, task_help="optional: evaluate the exported file on this task's dev set")

    p = sub.add_parser(
        formatter_class=_Help,
        name="bench",
        help="latency of a model, optionally against a dense one",
    )
    p.add_argument("model")
    p.add_argument("--against")
    _setting_args(p, batch="--batch-size", seq="--seq-len")
    p.add_argument("--repeats", type=int, default=10, help="interleaved rounds (one pass per model each)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        formatter_class=_Help,
        name="profile",
        help="measure the cost table (time per kept heads / FFN size) of a model's geometry on this machine",
    )
    p.add_argument("model")
    _setting_args(p, batch="--batch-size", seq="--seq-len")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        formatter_class=_Help,
        name="compare",
        help="PGB against the baselines at several budgets and seeds",
    )
    p.add_argument("model")
    _data_args(p)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.88], help="weight budgets")
    p.add_argument("--methods", nargs="+", help=f"default: all of {', '.join(METHOD_NAMES)}")
    g = p.add_argument_group(
        "equal measured speed: every method pruned to each speedup at the deployment setting (instead of "
        "--sparsity; default methods: pgb, kwon, structured-fisher)"
    )
    g.add_argument("--speedup", type=float, nargs="+", help="e.g. 2 4 8")
    _setting_args(g, batch="--target-batch-size", seq="--target-seq-len")
    p.add_argument("--seeds", type=int, default=3, help="runs per cell, each its own calibration draw")
    p.add_argument("--calib-samples", type=int, default=2048, help="calibration examples per run")
    p.add_argument(
        "--compensation-samples", type=int, help="of those, used by compensation (default: all of them)"
    )
    p.add_argument("--finetune-epochs", type=float, default=0.25, help="re-finetune (0: one shot only)")
    p.add_argument(
        "--finetune-seeds",
        type=int,
        default=1,
        help="re-finetunes per pruned model, each its own seed; the table shows their mean",
    )
    _keep_start_arg(p)
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        formatter_class=_Help,
        name="demo",
        help="fine-tune the bundled MiniLM and compare methods at 0.5 and 0.88",
    )
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")

    for p in sub.choices.values():
        p.add_argument("--quiet", action="store_true", help="no progress bars or library warnings")
    return parser


def _log_warnings_to_stderr() -> None:
    """pgbert's warnings (e.g. removed sublayers) as `warning: ...` lines on this run's stderr."""
    import logging

    logger = logging.getLogger("pgbert")
    for h in [h for h in logger.handlers if getattr(h, "_pgbert_cli", False)]:
        logger.removeHandler(h)  # bound to an earlier run's stderr
    h = logging.StreamHandler(sys.stderr)
    h.setLevel(logging.WARNING)
    h.setFormatter(logging.Formatter("warning: %(message)s"))
    h._pgbert_cli = True
    logger.addHandler(h)


def run(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if hasattr(a, "task") and a.task is None and a.command != "export":
        if not a.train_file:
            raise PgbertError(
                "give --task (e.g. sst2, squad, rt-sentiment), or --train-file for your own data"
            )
        a.task = "classification"
    from . import api

    api.set_quiet(a.quiet)
    _log_warnings_to_stderr()
    if a.command == "finetune":
        _, result = api.finetune(a.model, a.task, a.output, _data_options(a), _train_config(a), a.overwrite)
        _print_metrics(result["metrics"], False)
        print(f"saved to {a.output}")
    elif a.command == "prune":
        from .config import PruneConfig

        cfg = PruneConfig(
            sparsity=a.sparsity,
            flops_ratio=a.flops_ratio,
            speedup=a.speedup,
            latency_ms=a.latency_ms,
            device=a.device,
            threads=a.threads,
            target_batch_size=a.target_batch_size,
            target_seq_len=a.target_seq_len,
            dtype=a.dtype,
            method="pgb-identity" if a.no_permutation else a.method,
            importance=a.importance,
            calib_samples=a.calib_samples,
            compensation_samples=a.compensation_samples,
            compensate=not a.no_compensation,
            allow_drop=not a.no_layer_drop,
            drop_check=not a.no_drop_check,
            drop_check_se=a.drop_check_se,
            importance_steps=a.importance_steps,
            compensation_target=a.compensation_target,
            compensation_tokens=a.compensation_tokens,
            compensation_damp=a.compensation_damp,
            attention=a.attention,
            finetune_epochs=a.finetune_epochs,
            kd=a.kd,
            keep_start=not a.no_keep_start,
            lr=a.lr,
            batch_size=a.batch_size,
            max_seq_length=a.max_seq_length,
            seed=a.seed,
            quiet=a.quiet,
        )
        _, report = api.prune(
            a.model,
            a.task,
            None,
            a.output,
            _data_options(a),
            cfg,
            a.overwrite,
            compact=not a.no_compact,
            save_masked=a.save_masked,
        )
        _print_prune(report)
        print(f"saved to {a.output}")
    elif a.command == "profile":
        t = api.profile(a.model, a.device, a.threads, a.batch_size, a.seq_len, a.dtype, a.quiet)
        if a.json:
            print(json.dumps(t, indent=2))
        else:
            _print_profile(t)
    elif a.command == "compact":
        api.compact(a.pruned_dir, a.output, a.overwrite)
        print(f"saved to {a.output}")
    elif a.command == "export":
        task = a.task or ("classification" if a.train_file else None)
        res = api.export(a.model_dir, a.onnx, a.int8, task, _data_options(a), a.max_seq_length)
        print(json.dumps(res, indent=2))
    elif a.command == "bench":
        res = api.bench(a.model, a.against, a.batch_size, a.seq_len, a.threads, a.device, a.repeats, a.dtype)
        if a.json:
            print(json.dumps(res, indent=2))
        else:
            m = res["model"]
            print(
                f"{a.model}: {m['median_ms']:.1f} ms  params {m['params']:,}  (batch {a.batch_size} x seq {a.seq_len})"
            )
            if "against" in res:
                print(
                    f"{a.against}: {res['against']['median_ms']:.1f} ms  params {res['against']['params']:,}"
                )
                print(
                    f"speedup {res['speedup']:.2f}x  (FLOP-proportional limit {_limit(res)}; spread between "
                    f"rounds {100 * res['spread']:.0f}%{', machine busy' if res['busy'] else ''})"
                )
            env = res["environment"]
            print(
                f"on {env['cpu']}, {env['device']}, {env['threads']} threads, {env['dtype']}, torch {env['torch']}"
            )
    elif a.command == "compare":
        from .comparison import LATENCY_METHODS, METHODS, CompareConfig

        cfg = CompareConfig(
            sparsities=tuple(a.sparsity),
            speedups=tuple(a.speedup or ()),
            device=a.device,
            threads=a.threads,
            target_batch_size=a.target_batch_size,
            target_seq_len=a.target_seq_len,
            dtype=a.dtype,
            methods=tuple(a.methods or (LATENCY_METHODS if a.speedup else METHODS)),
            seeds=a.seeds,
            calib_samples=a.calib_samples,
            compensation_samples=a.compensation_samples,
            finetune_epochs=a.finetune_epochs,
            finetune_seeds=a.finetune_seeds,
            keep_start=not a.no_keep_start,
            max_seq_length=a.max_seq_length,
            quiet=a.quiet,
        )
        api.compare(a.model, a.task, a.output, _data_options(a), cfg, a.overwrite)
        print((__import__("pathlib").Path(a.output) / "results.md").read_text())
    elif a.command == "demo":
        api.demo(a.output, a.overwrite, a.seeds, a.quiet)
    elif a.command == "evaluate":
        metrics = api.evaluate(a.model, a.task, _data_options(a), a.max_seq_length)
        _print_metrics(metrics, a.json)
    return 0


def _keep_start_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-keep-start",
        action="store_true",
        help="return the best re-finetune check even when the one-shot model scored higher on dev (ablation)",
    )


def _print_prune(r: dict) -> None:
    target = "none" if r["sparsity_target"] is None else r["sparsity_target"]
    print(
        f"sparsity {r['sparsity_achieved']:.4f} (target {target})  flops ratio {r['flops_ratio']:.3f}"
        f" at seq {r['flops_seq_len']}  dropped {len(r['dropped_sublayers'])} sublayers"
    )
    if "latency" in r:
        lat, st = r["latency"], r["latency"]["setting"]
        print(
            f"speedup target {lat['target_speedup']:.2f}x: predicted {lat['predicted_speedup']:.2f}x, measured "
            f"{lat.get('measured_speedup', float('nan')):.2f}x (batch {st['batch_size']} x seq {st['seq_len']}, "
            f"{st['device']}, {st['dtype']}; {len(lat.get('calibration', []))} measured rounds)"
        )
    if "permutation_gain" in r:
        g = r["permutation_gain"]
        print(
            f"score kept {g['mean_score_kept_fraction']:.3f} "
            f"(no permutation {g['mean_score_kept_fraction_identity']:.3f})"
        )
    main = r.get("main_metric", "accuracy")
    for stage in ("dense", "masked", "pruned", "finetuned"):
        if stage in r["metrics"]:
            m = r["metrics"][stage]
            print(
                f"  {stage:9s} " + "  ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "loss" or main == k)
            )
    if r["metrics"].get("finetune_best_step") == 0:
        print("  no re-finetune check beat the one-shot model on dev: kept the one-shot model")
    if "compact" in r:
        c = r["compact"]
        print(
            f"compact: max |logit diff| {c['max_abs_logit_diff_vs_pruned']:.2e}  params {c['params']:,} / "
            f"{c['dense_params']:,}  speedup {c['speedup']:.2f}x (FLOP limit {_limit(c)})"
        )
    print("timings " + "  ".join(f"{k}={v:.1f}s" for k, v in r["timings_s"].items()))


def _print_profile(t: dict) -> None:
    g, s = t["geometry"], t["setting"]
    src = "cached" if t.get("cached") else f"measured in {t['seconds']:.0f} s"
    print(f"cost table ({src}): {t.get('cache')}")
    print(
        f"  {s['device']} {t['environment'].get('threads') or ''} threads {s['dtype']}, batch {s['batch_size']} x "
        f"seq {s['seq_len']}; {g['layers']} layers, hidden {g['hidden']}, {g['heads']} heads, FFN {g['ffn']}"
    )
    att = t["attention_ms"]
    full = max(t["ffn_in_ms"], key=int)
    ffn = t["ffn_in_ms"][full][-1] + t["ffn_out_ms"][full][-1]
    print(f"  per layer: attention {att[-1]:.2f} ms (1 head {att[1]:.2f} ms), FFN {ffn:.2f} ms")
    print(f"  fixed (embeddings, LayerNorms, head): {t['fixed_ms']:.2f} ms")


def _limit(res: dict) -> str:
    x = res["flops_limit_speedup"]
    return "none: no encoder left" if x is None else f"{x:.2f}x"


def _print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    for split, m in metrics.items():
        print(f"{split}: " + "  ".join(f"{k}={v:.4f}" for k, v in m.items()))


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's stop), raised where Python is so that run folders clean up."""


def _terminate(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = run(argv)
    except PgbertError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except Terminated:
        print("error: terminated", file=sys.stderr)
        code = 143
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code)

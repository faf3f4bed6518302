"""Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import transformers
from torch import nn

from . import models
from .runs import atomic_run_dir, check_output_dir, write_json
from .tasks import DataOptions, TaskData, load_task
from .training import TrainConfig, evaluate_all
from .training import finetune as _finetune

log = logging.getLogger("pgbert")


def set_quiet(quiet: bool) -> None:
    transformers.logging.set_verbosity_error() if quiet else transformers.logging.set_verbosity_warning()
    if quiet:
        transformers.logging.disable_progress_bar()


def finetune(
    model: str | Path,
    task: str,
    output: str | Path | None = None,
    data: DataOptions | TaskData | None = None,
    cfg: TrainConfig | None = None,
    overwrite: bool = False,
    progress=None,
) -> tuple[nn.Module, dict]:
    """Fine-tune `model` on `task`; with `output`, write a run folder (model, config, metrics, versions, log).
    progress: called with 1 after every training step."""
    cfg = cfg or TrainConfig()
    if output is not None:
        check_output_dir(output, overwrite)
    task_data = data if isinstance(data, TaskData) else load_task(task, data)
    tokenizer = models.load_tokenizer(model)
    net = models.load_for_task(model, task_data)
    t0 = time.perf_counter()
    net, history = _finetune(net, tokenizer, task_data, cfg, progress=progress)
    metrics = evaluate_all(net, tokenizer, task_data, max_seq_length=cfg.max_seq_length)
    result = {
        "task": task_data.spec.name,
        "model": str(model),
        "data": task_data.source,
        "train_examples": len(task_data.train),
        "dev_examples": {k: len(v) for k, v in task_data.dev.items()},
        "metrics": metrics,
        "steps": history["steps"],
        "seconds": time.perf_counter() - t0,
        "num_processes": history["num_processes"],
        "history": history["evals"],
    }
    if output is not None:
        from accelerate import PartialState

        if PartialState().is_main_process:
            with atomic_run_dir(output, overwrite) as tmp:
                net.config.pgbert_task = task_data.spec.name
                net.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                write_json(
                    tmp / "run_config.json",
                    {"task": task_data.spec.name, "model": str(model), **cfg.to_dict()},
                )
                write_json(tmp / "metrics.json", result)
        PartialState().wait_for_everyone()
    return net, result


def evaluate(
    model: str | Path, task: str, data: DataOptions | TaskData | None = None, max_seq_length: int = 128
) -> dict[str, dict[str, float]]:
    """Dev metrics of a fine-tuned (or compact) model on every dev split of `task`."""
    task_data = data if isinstance(data, TaskData) else load_task(task, data)
    tokenizer = models.load_tokenizer(model)
    net = models.load_for_task(model, task_data, require_finetuned=True, allow_compact=True)
    return evaluate_all(net, tokenizer, task_data, max_seq_length=max_seq_length)


def _compact_and_check(pruned: nn.Module, masks: dict, tokenizer, data: TaskData, max_seq_length: int):
    """Compact model plus its max |logit| difference to the pruned model on a dev batch."""
    import torch

    from .compact.model import to_compact
    from .tasks.features import collator_for, encode_examples

    compact = to_compact(pruned, masks)
    if data.spec.kind == "qa":
        from .tasks.squad import prepare_eval_features

        feats = prepare_eval_features(data.dev[data.main_dev][:8], tokenizer, max_seq_length)[0]
    else:
        feats = encode_examples(data.dev[data.main_dev][:16], tokenizer, data.spec.kind, max_seq_length)
    batch = collator_for(tokenizer, pruned)([{k: v for k, v in f.items() if k != "labels"} for f in feats])
    with torch.no_grad():
        a, b = pruned.eval()(**batch), compact(**batch)
    keys = ("start_logits", "end_logits") if data.spec.kind == "qa" else ("logits",)
    diff = max(float((getattr(a, k) - getattr(b, k)).abs().max()) for k in keys)
    return compact, diff


def prune(
    model: str | Path,
    task: str,
    sparsity: float | None = None,
    output: str | Path | None = None,
    data: DataOptions | TaskData | None = None,
    cfg=None,
    overwrite: bool = False,
    compact: bool = True,
    save_masked: bool = False,
):
    """Prune a fine-tuned model with cfg.method (default PGB). Returns (model, report): the compact model
    (or, with compact=False or an unstructured method, the masked one). With `output`, DIR holds that
    model, report.json and a model card (README.md); the masked model and its masks (`masked/`) only with
    save_masked (a masked model is always saved whole, with masks.safetensors, when it is the output).
    cfg.lr None re-finetunes at the lr `pgbert finetune` recorded in the model folder, else at 5e-5."""
    import torch

    from .bench import measure
    from .card import model_card
    from .compact.model import save
    from .config import REFINETUNE_LR, PruneConfig
    from .methods import get_method
    from .pipeline import prune_model

    cfg = cfg or PruneConfig(sparsity=sparsity)
    if sparsity is not None:
        cfg.sparsity = sparsity
    cfg.validate()
    if cfg.lr is None:  # re-finetune at the model's own fine-tune's learning rate, where recorded, or 5e-5
        recorded = models.finetune_lr(model)
        cfg = replace(cfg, lr=max(recorded or 0.0, REFINETUNE_LR))
        if recorded and cfg.finetune_epochs > 0:
            if recorded >= REFINETUNE_LR:
                log.info("re-finetuning at lr %g, the model's own fine-tune's (its run_config.json)", cfg.lr)
            else:  # at 2e-5 it scored below 5e-5 (benchmarks/RESULTS.md)
                log.info("re-finetuning at lr %g: the model's fine-tune ran at %g, too low", cfg.lr, recorded)
    compact = compact and get_method(cfg.method).structured
    if output is not None:
        check_output_dir(output, overwrite)
    task_data = data if isinstance(data, TaskData) else load_task(task, data)
    tokenizer = models.load_tokenizer(model)
    dense = models.load_for_task(model, task_data, require_finetuned=True).eval()
    pruned, masks, report = prune_model(dense, tokenizer, task_data, cfg)
    report.update(task=task_data.spec.name, model=str(model), data=task_data.source)
    _warn_drops(report)
    result = pruned
    if compact:
        result, diff = _compact_and_check(pruned, masks, tokenizer, task_data, cfg.max_seq_length)
        if cfg.latency_budget:  # measured where the budget was set: the profiled deployment setting
            st = cfg.setting()
            speed = measure(
                result,
                dense,
                st.batch_size,
                st.seq_len,
                st.threads or None,
                st.device,
                repeats=9,
                dtype=st.dtype,
            )
            report["latency"].update(
                measured_ms=speed["model"]["median_ms"], measured_speedup=speed["speedup"]
            )
            dense.to("cpu", torch.float32)
            result.to("cpu", torch.float32)
        else:
            speed = measure(result, dense, batch_size=32, seq_len=cfg.flops_seq_len, repeats=6)
        report["compact"] = {
            "max_abs_logit_diff_vs_pruned": diff,
            "params": speed["model"]["params"],
            "dense_params": speed["against"]["params"],
            "latency_ms": speed["model"]["median_ms"],
            "dense_latency_ms": speed["against"]["median_ms"],
            "speedup": speed["speedup"],
            "flops_limit_speedup": speed["flops_limit_speedup"],
            "bench": {k: speed[k] for k in ("batch_size", "seq_len", "environment", "spread", "busy")},
        }
    if output is not None:
        with atomic_run_dir(output, overwrite) as tmp:
            if compact:
                save(result, tmp, tokenizer)
                if save_masked:
                    _save_masked(pruned, masks, tokenizer, tmp / "masked")
            else:
                _save_masked(pruned, masks, tokenizer, tmp)
            write_json(tmp / "report.json", report)
            (tmp / "README.md").write_text(model_card(report, task_data.spec.kind))
            log.info("pruned %s at sparsity %.3f", model, report["sparsity_achieved"])
    return result, report


def _save_masked(pruned: nn.Module, masks: dict, tokenizer, folder: Path) -> None:
    """The masked model (dense shapes, pruned weights zero) and its masks (uint8), for `pgbert compact`."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    pruned.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_file(
        {k: (v != 0).to(torch.uint8).contiguous() for k, v in masks.items()}, folder / "masks.safetensors"
    )


def _warn_drops(report: dict) -> None:
    """Say which sublayers were removed (report["warnings"] and the log); loudly when a whole encoder went."""
    dropped = report.get("dropped_sublayers", [])
    total = 2 * len(report.get("layers", []))
    warnings = report.setdefault("warnings", [])
    if total and len(dropped) >= total:
        warnings.append(
            f"every encoder sublayer ({total}) was removed: the model is its embeddings and head alone; "
            "the budget is too small to keep anything, try a lower --sparsity"
        )
    elif dropped:
        warnings.append(f"removed {len(dropped)} of {total} sublayers: {', '.join(dropped)}")
    for w in warnings:
        log.warning(w)


def compact(pruned_dir: str | Path, output: str | Path, overwrite: bool = False) -> nn.Module:
    """Compact a masked model folder (DIR/masked of `pgbert prune`, or any folder with masks.safetensors)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from .compact.model import save, to_compact
    from .errors import PgbertError

    src = Path(pruned_dir)
    if (src / "masked" / "masks.safetensors").is_file():
        src = src / "masked"
    if not (src / "masks.safetensors").is_file():
        raise PgbertError(
            f"{pruned_dir} holds no masks.safetensors; give the output folder of `pgbert prune`"
        )
    check_output_dir(output, overwrite)
    config = AutoConfig.from_pretrained(src)
    kind = "qa" if any("QuestionAnswering" in a for a in config.architectures or []) else "classification"
    net = models.task_model_class(kind).from_pretrained(src).eval()
    masks = {k: v.float() for k, v in load_file(src / "masks.safetensors").items()}
    result = to_compact(net, masks)
    with atomic_run_dir(output, overwrite) as tmp:
        save(result, tmp, models.AutoTokenizer.from_pretrained(src))
    return result


def load(folder: str | Path) -> nn.Module:
    """Load a compact pgbert model (same result as from_pretrained with trust_remote_code)."""
    from .compact.model import load as _load

    return _load(folder)


def export(
    folder: str | Path,
    onnx_file: str | Path,
    int8: bool = False,
    task: str | None = None,
    data: DataOptions | TaskData | None = None,
    max_seq_length: int = 128,
) -> dict:
    """Export a compact (or dense) model folder to ONNX and check it in onnxruntime. int8: ONNX Runtime's
    dynamic int8 quantization. With a task, the dev metrics of the torch model and the ONNX file."""
    from .compact.export import OnnxModel, export_onnx

    net = _load_any(folder)
    if task is not None:  # load the data before the export, so bad data fails first
        task_data = data if isinstance(data, TaskData) else load_task(task, data)
    result = export_onnx(net, onnx_file, int8=int8)
    if task is not None:
        tokenizer = models.load_tokenizer(folder)
        onnx_model = OnnxModel(onnx_file, net.config)
        result["metrics"] = {
            "torch": evaluate_all(net, tokenizer, task_data, max_seq_length=max_seq_length),
            "onnx_int8" if int8 else "onnx": evaluate_all(
                onnx_model, tokenizer, task_data, max_seq_length=max_seq_length
            ),
        }
    return result


def profile(
    model: str | Path,
    device: str = "cpu",
    threads: int = 0,
    batch_size: int = 32,
    seq_len: int = 128,
    dtype: str = "float32",
    quiet: bool = False,
) -> dict:
    """The cost table of `model`'s geometry at this deployment setting (cached under ~/.cache/pgbert):
    attention time per kept head count, FFN time over kept neurons x widths, the fixed part."""
    from .profile import Setting, cost_table

    if models._is_pgbert(models.resolve(model)):
        from .errors import PgbertError

        raise PgbertError(f"{model} is a compact model; profile the dense model it was pruned from")
    net = _load_any(model)
    return cost_table(net, Setting(device, threads, dtype, batch_size, seq_len), quiet=quiet).data


def _load_any(model: str | Path) -> nn.Module:
    """A compact pgbert folder, or a plain transformers task-model folder, ready for inference."""
    name = models.resolve(model)
    if models._is_pgbert(name):
        return load(name)
    config = models.load_config(name)
    kind = "qa" if any("QuestionAnswering" in a for a in config.architectures or []) else "classification"
    return models.task_model_class(kind).from_pretrained(name).eval()


def bench(
    model: str | Path,
    against: str | Path | None = None,
    batch_size: int = 32,
    seq_len: int = 128,
    threads: int | None = None,
    device: str = "cpu",
    repeats: int = 10,
    dtype: str = "float32",
) -> dict:
    """Latency of a model folder, optionally against a dense reference: speedup and FLOP limit."""
    from .bench import measure
    from .errors import PgbertError

    if batch_size < 1 or seq_len < 1:
        raise PgbertError(f"--batch-size and --seq-len must be positive, got {batch_size} and {seq_len}")

    def get(name):
        net = _load_any(name)
        cfg = getattr(net.config, "base_config", None) or net.config.to_dict()
        limit = cfg.get("max_position_embeddings", 512)
        if seq_len > limit:
            raise PgbertError(
                f"--seq-len {seq_len} exceeds the model's {limit} positions; use at most {limit}"
            )
        return net

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise PgbertError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return measure(
        get(model), get(against) if against else None, batch_size, seq_len, threads, device, repeats, dtype
    )


def compare(
    model: str | Path,
    task: str,
    output: str | Path,
    data: DataOptions | TaskData | None = None,
    cfg=None,
    overwrite: bool = False,
    on_row=None,
) -> list[dict]:
    """Run every method at every budget (and seed); write results.json, results.md and results.png.
    on_row: called with each row (a dict) as it finishes."""
    from . import comparison as cmp

    cfg = cfg or cmp.CompareConfig()
    cfg.validate()  # before any work
    check_output_dir(output, overwrite)
    task_data = data if isinstance(data, TaskData) else load_task(task, data)
    tokenizer = models.load_tokenizer(model)
    dense = models.load_for_task(model, task_data, require_finetuned=True).eval()
    t0 = time.perf_counter()
    log = (lambda *a: None) if cfg.quiet else print
    rows = cmp.run(dense, tokenizer, task_data, cfg, log=log, on_row=on_row)
    summary, pairs = cmp.summarise(rows), cmp.paired(rows)
    main = task_data.spec.main_metric
    done = cmp.reached(rows)
    dense_score = done[0]["dense"] if done else float("nan")
    with atomic_run_dir(output, overwrite) as tmp:
        write_json(
            tmp / "results.json",
            {
                "model": str(model),
                "task": task_data.spec.name,
                "config": vars(cfg),
                "dense": dense_score,
                "rows": rows,
                "summary": summary,
                "paired": pairs,
                "seconds": time.perf_counter() - t0,
            },
        )
        (tmp / "results.md").write_text(
            cmp.markdown(summary, dense_score, main, pairs, cfg.finetune_epochs > 0, cfg.finetune_seeds)
            + cmp.unreachable_notes(rows)
        )
        cmp.plot(summary, tmp / "results.png", main)
    return rows


def demo(
    output: str | Path = "runs/demo", overwrite: bool = False, seeds: int = 1, quiet: bool = False
) -> Path:
    """The README's main job (pgbert.demo_run): fine-tune the bundled MiniLM on the bundled sentiment task
    (cached), then compare PGB with structured Fisher pruning and Kwon et al. at sparsity 0.5 and 0.88."""
    from .demo_run import run

    return run(output, overwrite, seeds, quiet)

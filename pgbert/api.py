"""Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import logging
import time
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
) -> tuple[nn.Module, dict]:
    """Fine-tune `model` on `task`; with `output`, write a run folder (model, config, metrics, versions, log)."""
    cfg = cfg or TrainConfig()
    if output is not None:
        check_output_dir(output, overwrite)
    task_data = data if isinstance(data, TaskData) else load_task(task, data)
    tokenizer = models.load_tokenizer(model)
    net = models.load_for_task(model, task_data)
    t0 = time.perf_counter()
    net, history = _finetune(net, tokenizer, task_data, cfg)
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
    net = models.load_for_task(model, task_data, require_finetuned=True)
    return evaluate_all(net, tokenizer, task_data, max_seq_length=max_seq_length)

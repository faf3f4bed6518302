"""The fine-tuned model and task a benchmark script runs on: a model folder plus --task, or --train-file and
--dev-file (the TSV files with columns sentence, label that benchmarks/vader_tasks.py writes)."""

from __future__ import annotations

import argparse

from pgbert import models
from pgbert.tasks import DataOptions, TaskData, load_task


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="runs/minilm-rt")
    p.add_argument("--task", default="rt-sentiment")
    p.add_argument("--train-file", help="with --dev-file: TSV files with columns sentence, label")
    p.add_argument("--dev-file")


def load(a: argparse.Namespace) -> tuple[TaskData, object, object]:
    """(task data, tokenizer, the fine-tuned model in eval mode) named by add_args' options."""
    files = DataOptions(
        train_file=a.train_file, dev_file=a.dev_file, text_column="sentence", label_column="label"
    )
    data = load_task(a.task, files if a.train_file else None)
    tok = models.load_tokenizer(a.model)
    return data, tok, models.load_for_task(a.model, data, require_finetuned=True).eval()

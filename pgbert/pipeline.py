"""The runner every pruning method goes through (`pgbert prune --method X` and `pgbert compare` alike):

calibration data -> the method's importance -> its selection under the budget (masks) -> its update
(PGB / structured: least-squares compensation; Kwon et al.: mask tuning) -> re-finetuning with the masks
held fixed -> metrics at every stage and report.json. The compact export lives in pgbert.compact.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .adapters import prunable_names
from .config import MIN_CALIB, PruneConfig
from .errors import PgbertError
from .methods import get_method
from .methods.base import Calibration
from .methods.kwon import sample_with_replacement
from .report import build_report
from .tasks import TaskData
from .tasks.features import collator_for, encode_examples, train_features
from .training import TrainConfig, apply_masks, evaluate, finetune


def calibrate(data: TaskData, tokenizer, model: nn.Module, cfg: PruneConfig, sampling: str) -> Calibration:
    """Calibration examples for seed cfg.seed, drawn as the method draws them, and held-out check
    examples disjoint from them (for the compensation guard)."""
    pool = list(data.train)
    n = min(cfg.calib_samples, len(pool))
    if n < MIN_CALIB:
        raise PgbertError(
            f"the train split has only {len(pool)} examples; pruning needs at least {MIN_CALIB} for calibration"
        )
    if sampling == "with-replacement":  # Kwon et al.'s draw
        idx = sample_with_replacement(len(pool), cfg.calib_samples, cfg.seed)
        calib = [pool[i] for i in idx]
        drawn = set(idx.tolist())
        rest = [ex for i, ex in enumerate(pool) if i not in drawn]
        random.Random(cfg.seed).shuffle(rest)
    else:
        random.Random(cfg.seed).shuffle(pool)
        # a split too small for the draw and check_samples more holds min(check_samples, a quarter of itself)
        # out of the draw, so the guards always score examples that compensation never fitted
        n = min(n, max(MIN_CALIB, len(pool) - min(cfg.check_samples, len(pool) // 4)))
        calib, rest = pool[:n], pool[n:]
    check = (rest or calib)[: cfg.check_samples]  # calib only if nothing is left (tiny or all drawn)
    return Calibration(
        examples=calib,
        batches=importance_batches(data, calib, tokenizer, model, cfg),
        fit=fit_batches(data, calib, tokenizer, model, cfg),
        check=batches_of(data, check, tokenizer, model, cfg, by_length=True),
        check_examples=len(check),
        task_kind=data.spec.kind,
        dev_seq_len=dev_seq_len(data, tokenizer, cfg.max_seq_length),
    )


def importance_batches(
    data: TaskData, examples: list[dict], tokenizer, model: nn.Module, cfg: PruneConfig
) -> list[dict]:
    """The batches the Fisher sums square gradients of: the drawn examples in order, cfg.fisher_batch_size
    at a time (default: cfg.batch_size)."""
    return batches_of(
        data, examples, tokenizer, model, replace(cfg, batch_size=cfg.fisher_batch_size or cfg.batch_size)
    )


def fit_batches(
    data: TaskData, examples: list[dict], tokenizer, model: nn.Module, cfg: PruneConfig
) -> list[dict]:
    """The batches compensation fits on: the first cfg.compensation_samples calibration examples (all by
    default), batched by length. The first cfg.drop_check_samples examples are batched apart, so the drop
    check's fit (the first cfg.drop_check_batches batches) is exactly those examples."""
    n = len(examples) if cfg.compensation_samples is None else min(cfg.compensation_samples, len(examples))
    head = min(n, cfg.drop_check_samples)
    return [
        b
        for part in (examples[:head], examples[head:n])
        if part
        for b in batches_of(data, part, tokenizer, model, cfg, by_length=True)
    ]


def batches_of(
    data: TaskData,
    examples: list[dict],
    tokenizer,
    model: nn.Module,
    cfg: PruneConfig,
    by_length: bool = False,
) -> list[dict]:
    """Padded batches of the examples' features, in order; by_length: sorted by token count first, so
    little of each batch is padding (for stages whose result does not depend on how examples are batched:
    compensation sums over tokens, the guards over examples; importance squares per-batch gradients and
    keeps the drawn order)."""
    feats = train_features(data, tokenizer, cfg.max_seq_length, examples)
    if by_length:
        feats = sorted(feats, key=lambda f: len(f["input_ids"]))
    return list(DataLoader(feats, batch_size=cfg.batch_size, collate_fn=collator_for(tokenizer, model)))


def dev_seq_len(data: TaskData, tokenizer, max_seq_length: int) -> float:
    """Average tokenised length of the main dev split (special tokens included, truncated as evaluated)."""
    examples = data.dev[data.main_dev]
    if data.spec.kind == "qa":
        from .tasks.squad import prepare_eval_features

        feats = prepare_eval_features(examples, tokenizer, max_seq_length)[0]
    else:
        feats = encode_examples(examples, tokenizer, data.spec.kind, max_seq_length)
    return sum(len(f["input_ids"]) for f in feats) / max(1, len(feats))


def prune_model(
    dense: nn.Module,
    tokenizer,
    data: TaskData,
    cfg: PruneConfig,
    calib: Calibration | None = None,
    scores: tuple[Any, float] | None = None,
    dense_metrics: dict | None = None,
) -> tuple[nn.Module, dict, dict]:
    """Prune a fine-tuned model with cfg.method. Returns (pruned model with fixed masks, masks, report).
    calib, scores (the method's importance and the seconds it took) and dense_metrics may be passed in
    when several budgets share them (compare): the result is the same as computing them here."""
    cfg.validate()
    method = get_method(cfg.method)
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    names = prunable_names(dense)
    calib = calib or calibrate(data, tokenizer, dense, cfg, method.sampling)
    metrics = {"dense": dense_metrics or evaluate(dense, tokenizer, data, max_seq_length=cfg.max_seq_length)}

    t = time.perf_counter()  # 1. importance
    if scores is None:
        scores = (method.importance(dense, calib, cfg), time.perf_counter() - t)
    unit_scores, timings["importance"] = scores

    t = time.perf_counter()  # 2-4. selection under the budget (PGB: grouping, allocation, re-permutation)
    sel = method.select(dense, unit_scores, calib, cfg)
    pruned = copy.deepcopy(dense)
    apply_masks(pruned, sel.masks)
    timings["grouping_allocation"] = time.perf_counter() - t
    metrics["masked"] = evaluate(pruned, tokenizer, data, max_seq_length=cfg.max_seq_length)

    t = time.perf_counter()  # 5. compensation (PGB, structured) or mask tuning (Kwon et al.)
    update = method.update(dense, pruned, sel, unit_scores, calib, cfg)
    timings["compensation"] = time.perf_counter() - t
    metrics["pruned"] = evaluate(pruned, tokenizer, data, max_seq_length=cfg.max_seq_length)

    t = time.perf_counter()  # 6. re-finetuning with the masks held fixed
    if cfg.finetune_epochs > 0:
        pruned, tuned = refinetune(pruned, sel.masks, dense, tokenizer, data, cfg, metrics["pruned"])
        metrics.update(tuned)
    timings["finetune"] = time.perf_counter() - t

    report = build_report(dense, pruned, names, sel, cfg, calib.dev_seq_len)
    report.update(
        metrics=metrics,
        timings_s=timings,
        compensation=update,
        calibration={
            "examples": len(calib.examples),
            "sampling": method.sampling,
            "check_examples": calib.check_examples,
        },
    )
    return pruned, sel.masks, report


def refinetune(
    pruned: nn.Module,
    masks: dict,
    dense: nn.Module,
    tokenizer,
    data: TaskData,
    cfg: PruneConfig,
    start: dict | None = None,
) -> tuple[nn.Module, dict]:
    """Stage 6: re-finetune the pruned model with its masks held fixed (distilling from the dense model
    with cfg.kd). start: the pruned model's dev metrics; with cfg.keep_start the pruned model is kept when
    no dev check beats it. Returns the model and its metrics ("finetuned", "finetune_history",
    "finetune_best_step": 0 when the one-shot model was kept)."""
    tcfg = TrainConfig(
        epochs=cfg.finetune_epochs,
        lr=cfg.refinetune_lr,
        batch_size=cfg.batch_size,
        max_seq_length=cfg.max_seq_length,
        seed=cfg.seed,
        quiet=cfg.quiet,
        eval_steps=_eval_steps(len(data.train), cfg),
        kd_alpha=cfg.kd_alpha if cfg.kd else 0.0,
    )
    pruned, hist = finetune(
        pruned,
        tokenizer,
        data,
        tcfg,
        masks=masks,
        teacher=dense if cfg.kd else None,
        start=start if cfg.keep_start else None,
    )
    metrics = evaluate(pruned, tokenizer, data, max_seq_length=cfg.max_seq_length)
    return pruned, {
        "finetuned": metrics,
        "finetune_history": hist["evals"],
        "finetune_best_step": hist["best_step"],
    }


def _eval_steps(n_train: int, cfg: PruneConfig) -> int:
    steps = max(1, int(n_train * cfg.finetune_epochs / cfg.batch_size))
    return max(1, steps // 4)  # four dev checks per re-finetune, early stop keeps the best (or the start)

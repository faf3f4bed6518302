"""Fine-tuning, re-finetuning (fixed masks, optional distillation) and evaluation on Hugging Face Accelerate.

The same code runs on one CPU, several CPU processes (`accelerate launch --num_processes 2 --cpu`) or GPUs.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from .tasks import TaskData
from .tasks.features import collator_for, train_features
from .tasks.metrics import glue_metrics

log = logging.getLogger("pgbert")


@dataclass
class TrainConfig:
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    max_seq_length: int = 128
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 42
    eval_steps: int | None = None  # evaluate every N optimiser steps (default: once per epoch)
    patience: int | None = None  # stop after this many evaluations without improvement
    max_steps: int | None = None
    kd_alpha: float = 0.0  # weight of the distillation loss; 0 disables distillation
    kd_temperature: float = 2.0
    quiet: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _accelerator() -> Accelerator:
    return Accelerator()


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Zero the pruned weights in place: weight *= mask for every masked parameter."""
    if not masks:
        return
    with torch.no_grad():
        for name, mask in masks.items():
            p = model.get_parameter(name)
            p.mul_(mask.to(device=p.device, dtype=p.dtype))


def _kd_loss(student, teacher, kind: str, temperature: float) -> torch.Tensor:
    if kind == "regression":
        return F.mse_loss(student, teacher)
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, -1),
            F.log_softmax(teacher / t, -1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )


def finetune(
    model: nn.Module,
    tokenizer,
    data: TaskData,
    cfg: TrainConfig | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
    progress: Callable[[int], None] | None = None,
    start: dict[str, float] | None = None,
) -> tuple[nn.Module, dict]:
    """Train on data.train, evaluate on the main dev split, keep the best checkpoint (highest main metric;
    ties, common on small or easy dev sets, go to the lower dev loss, then to the later step).

    masks: parameter name -> 0/1 tensor held fixed (pruned weights stay exactly zero).
    teacher: dense model to distil from (logit KL at cfg.kd_temperature, weight cfg.kd_alpha).
    progress: called with 1 after every optimiser step (a caller's own progress bar).
    start: the model's dev metrics as given (evaluate's dict); it then competes as the check at step 0, so
    training never returns a model that scores lower on the dev checks than the one it was given.
    Returns the model (best dev checkpoint) and a history dict ("best_step": 0 when the start was kept).
    """
    cfg = cfg or TrainConfig()
    acc = _accelerator()
    set_seed(cfg.seed)
    feats = train_features(data, tokenizer, cfg.max_seq_length)
    loader = DataLoader(
        feats, batch_size=cfg.batch_size, shuffle=True, collate_fn=collator_for(tokenizer, model)
    )
    steps_per_epoch = math.ceil(len(loader) / acc.num_processes)
    total = cfg.max_steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "_ln.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    # A prepared scheduler steps once per process per optimiser step: size it in those units.
    n = acc.num_processes
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total) * n, total * n)
    apply_masks(model, masks)
    best, best_loss, best_state, best_step, bad = -math.inf, math.inf, None, None, 0
    if start is not None:
        best, best_loss, best_step = start[data.spec.main_metric], start.get("loss", math.inf), 0
        best_state = copy.deepcopy(model.state_dict())
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    if teacher is not None:
        teacher = acc.prepare_model(teacher, evaluation_mode=True)
        teacher.eval()
    use_kd = teacher is not None and cfg.kd_alpha > 0
    eval_every = cfg.eval_steps or steps_per_epoch
    history: dict = {"evals": [], "config": cfg.to_dict(), "steps": 0}
    bar = tqdm(total=total, desc="fine-tune", disable=cfg.quiet or not acc.is_local_main_process, leave=False)
    t0, step, done = time.perf_counter(), 0, False
    while not done:
        model.train()
        for batch in loader:
            out = model(**batch)
            loss = out.loss
            if use_kd:
                with torch.no_grad():
                    t_out = teacher(
                        **{k: v for k, v in batch.items() if not k.endswith(("labels", "positions"))}
                    )
                kd = sum(
                    _kd_loss(getattr(out, k), getattr(t_out, k), data.spec.kind, cfg.kd_temperature)
                    for k in _logit_keys(data.spec.kind)
                )
                loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * kd
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            apply_masks(acc.unwrap_model(model), masks)
            step += 1
            bar.update(1)
            if progress is not None:
                progress(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % eval_every == 0 or step == total:
                metrics = evaluate(
                    acc.unwrap_model(model),
                    tokenizer,
                    data,
                    max_seq_length=cfg.max_seq_length,
                    quiet=True,
                    accelerator=acc,
                )
                score = metrics[data.spec.main_metric]
                history["evals"].append({"step": step, **metrics})
                log.info("step %d dev %s", step, metrics)
                loss_now = metrics.get("loss", math.inf)
                if improves(score, loss_now, best, best_loss):
                    best, best_loss, best_step, bad = score, loss_now, step, 0
                    best_state = copy.deepcopy(acc.unwrap_model(model).state_dict())
                else:
                    bad += 1
                model.train()
                if cfg.patience is not None and bad >= cfg.patience:
                    done = True
                    break
            if step >= total:
                done = True
                break
    bar.close()
    model = acc.unwrap_model(model)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.update(
        steps=step,
        train_seconds=time.perf_counter() - t0,
        best=best,
        best_step=best_step,
        num_processes=acc.num_processes,
    )
    return model, history


def improves(score: float, loss: float, best: float, best_loss: float) -> bool:
    """A dev check beats the best so far: a higher main metric, or the same with a dev loss no higher."""
    return score > best or (score == best and loss <= best_loss)


def _logit_keys(kind: str) -> tuple[str, ...]:
    return ("start_logits", "end_logits") if kind == "qa" else ("logits",)


@torch.no_grad()
def predict(
    model: nn.Module,
    features: list[dict],
    tokenizer,
    kind: str,
    batch_size: int = 64,
    accelerator: Accelerator | None = None,
    quiet: bool = True,
) -> dict[str, np.ndarray]:
    """Run the model over `features`; returns the logits arrays (gathered across processes)."""
    acc = accelerator or _accelerator()
    loader = acc.prepare_data_loader(
        DataLoader(features, batch_size=batch_size, collate_fn=collator_for(tokenizer, model))
    )
    was_training = model.training
    model.eval()
    model_dev = model.to(acc.device)
    keys = _logit_keys(kind)
    outs: dict[str, list] = {k: [] for k in keys}
    for batch in tqdm(loader, desc="evaluate", disable=quiet or not acc.is_local_main_process, leave=False):
        batch = {k: v for k, v in batch.items() if not k.endswith(("labels", "positions"))}
        out = model_dev(**batch)
        for k in keys:
            x = getattr(out, k)
            if kind == "qa":
                x = acc.pad_across_processes(x, dim=1, pad_index=-1e4)
            outs[k].append(acc.gather_for_metrics(x).float().cpu())
    model.train(was_training)
    if kind == "qa":
        width = max(x.shape[1] for x in outs[keys[0]])
        return {
            k: np.concatenate([F.pad(x, (0, width - x.shape[1]), value=-1e4).numpy() for x in v])
            for k, v in outs.items()
        }
    return {k: torch.cat(v).numpy() for k, v in outs.items()}


def evaluate(
    model: nn.Module,
    tokenizer,
    data: TaskData,
    split: str | None = None,
    max_seq_length: int = 128,
    batch_size: int = 64,
    quiet: bool = True,
    accelerator: Accelerator | None = None,
) -> dict[str, float]:
    """Task metrics of `model` on one dev split (default: the first)."""
    split = split or data.main_dev
    examples = data.dev[split]
    kind = data.spec.kind
    if kind == "qa":
        from .tasks.squad import decode_answers, prepare_eval_features, squad_metrics

        feats, meta = prepare_eval_features(examples, tokenizer, max_length=max_seq_length)
        logits = predict(model, feats, tokenizer, kind, batch_size, accelerator, quiet)
        answers = decode_answers(examples, meta, logits["start_logits"], logits["end_logits"])
        return squad_metrics(answers, examples)
    from .tasks.features import encode_examples

    feats = encode_examples(examples, tokenizer, kind, max_seq_length)
    logits = predict(model, feats, tokenizer, kind, batch_size, accelerator, quiet)["logits"]
    labels = np.array([ex["label"] for ex in examples])
    preds = logits[:, 0] if kind == "regression" else logits.argmax(-1)
    metrics = glue_metrics(data.spec.metrics, preds, labels)
    if kind != "regression":
        # Dev loss: the compensation guard and comparisons read it.
        metrics["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels).long()))
    return metrics


def evaluate_all(model: nn.Module, tokenizer, data: TaskData, **kw) -> dict[str, dict[str, float]]:
    return {split: evaluate(model, tokenizer, data, split, **kw) for split in data.dev}

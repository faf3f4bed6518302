"""PGB, stage by stage, as ../shared/METHOD.md defines it:

importance -> grouping by permutation -> budget allocation -> masks (re-permutation) -> compensation
-> re-finetuning. The compact export lives in pgbert.compact.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from .adapters import MATRICES, adapter_for
from .errors import PgbertError
from .method.allocation import (
    GROUP_COUNTS,
    PAIRS,
    Option,
    allocate,
    blocks_to_mask,
    head_options,
    matrix_options,
    pair_options,
)
from .method.compensation import compensate
from .method.importance import fisher, head_importance, magnitude_scores, unit_calibrate, unit_gradients
from .method.structure import flops_ratio, layer_structure
from .tasks import TaskData
from .tasks.features import collator_for, train_features
from .training import TrainConfig, apply_masks, evaluate, finetune

log = logging.getLogger("pgbert")
MIN_CALIB = 32


@dataclass
class PruneConfig:
    sparsity: float
    importance: str = "fisher"  # "fisher" | "magnitude"
    calib_samples: int = 2048
    compensation_samples: int = 512
    check_samples: int = 256
    permute: bool = True  # False: identity grouping (the no-permutation ablation)
    group_counts: tuple[int, ...] = GROUP_COUNTS
    fixed_groups: int | None = None  # ablation: every matrix keeps k = (1-s) G^2 (<= G) of its G blocks
    compensate: bool = True
    pairing: bool = True  # decide Q/K, V/O and FFN-in/out index sets jointly (False: matrix by matrix)
    unit_fisher: bool = True  # price whole units (dims, neurons) by their mask Fisher (False: summed W^2 F)
    attention: str = "heads"  # "heads": keep whole heads | "blocks": Q/K and V/O pair blocks (dims)
    allow_drop: bool = True  # False: every matrix keeps at least one block (no layer dropping)
    finetune_epochs: float = 1.0
    kd: bool = False
    kd_alpha: float = 0.5
    lr: float = 5e-5
    batch_size: int = 32
    max_seq_length: int = 128
    seed: int = 0
    flops_seq_len: int = 128
    quiet: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise PgbertError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        if self.importance not in ("fisher", "magnitude"):
            raise PgbertError(f"--importance must be fisher or magnitude, got {self.importance}")
        if self.attention not in ("heads", "blocks"):
            raise PgbertError(f"--attention must be heads or blocks, got {self.attention}")
        if self.calib_samples < MIN_CALIB:
            raise PgbertError(f"--calib-samples {self.calib_samples} is too few; use at least {MIN_CALIB}")


def prunable_names(model: nn.Module) -> list[list[str]]:
    """Per layer, the parameter names of Q, K, V, O, FFN-in, FFN-out weights (in MATRICES order)."""
    adapter = adapter_for(model.config)
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        [names[id(adapter.parts(layer).linear(k).weight)] for k in MATRICES]
        for layer in adapter.layers(model)
    ]


def calibration_split(data: TaskData, cfg: PruneConfig) -> tuple[list[dict], list[dict]]:
    """Calibration examples (for importance and compensation) and disjoint held-out check examples."""
    pool = list(data.train)
    random.Random(cfg.seed).shuffle(pool)
    n = min(cfg.calib_samples, len(pool))
    if n < MIN_CALIB:
        raise PgbertError(
            f"the train split has only {len(pool)} examples; pruning needs at least {MIN_CALIB} for calibration"
        )
    calib = pool[:n]
    rest = pool[n:]
    check = (rest or calib)[: cfg.check_samples]
    return calib, check


def batches_of(
    data: TaskData, examples: list[dict], tokenizer, model: nn.Module, cfg: PruneConfig
) -> list[dict]:
    feats = train_features(data, tokenizer, cfg.max_seq_length, examples)
    return list(DataLoader(feats, batch_size=cfg.batch_size, collate_fn=collator_for(tokenizer, model)))


@torch.no_grad()
def task_loss(model: nn.Module, batches: list[dict]) -> float:
    model.eval()
    losses = [float(model(**b).loss) * len(b["input_ids"]) for b in batches]
    return sum(losses) / sum(len(b["input_ids"]) for b in batches)


def fisher_and_units(dense: nn.Module, batches: list[dict], names: list[list[str]], quiet: bool = True):
    """One backward pass per batch: weight Fisher saliency and the unit (dim, neuron, head, feature) Fisher."""
    heads = adapter_for(dense.config).num_heads(dense.config)
    flat = [n for layer in names for n in layer]
    return fisher(dense, batches, flat, unit_gradients(dense, names, heads), quiet=quiet)


def pgb_scores(
    dense: nn.Module, batches: list[dict], names: list[list[str]], cfg: PruneConfig
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Stage 1: the score of every weight (Fisher saliency, unit-calibrated unless cfg.unit_fisher is off;
    or magnitude) and of every attention head."""
    heads = adapter_for(dense.config).num_heads(dense.config)
    flat = [n for layer in names for n in layer]
    if cfg.importance == "magnitude" or not cfg.unit_fisher:
        scores = (
            magnitude_scores(dense, flat)
            if cfg.importance == "magnitude"
            else fisher(dense, batches, flat, quiet=cfg.quiet)[0]
        )
        return scores, head_importance(scores, names, heads)
    scores, units = fisher_and_units(dense, batches, names, cfg.quiet)
    return calibrated_scores(scores, units, names, heads)


def calibrated_scores(
    raw: dict[str, torch.Tensor], units: list[dict[str, torch.Tensor]], names: list[list[str]], heads: int
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """PGB's weight scores (unit-calibrated Fisher) and head scores (head-mask Fisher) from one
    fisher_and_units pass."""
    return unit_calibrate(raw, names, units), head_importance(raw, names, heads, units)


# Time of a dense GEMM over time of k blocks holding the same weights (shared/PERF.md, 2-core CPU).
GROUPED_EFFICIENCY = {2: 0.95, 3: 0.85, 4: 0.8, 5: 0.75, 6: 0.7, 7: 0.67, 8: 0.65}


@dataclass
class Choice:
    """One knapsack option for an item (one matrix, or a pair deciding its shared index set jointly)."""

    parts: tuple[Option, ...]

    @property
    def cost(self) -> int:
        return sum(o.cost for o in self.parts)

    @property
    def value(self) -> float:
        """Kept score, discounted for block-diagonal layouts by how fast they run (PERF.md): the knapsack
        then takes G blocks only where they keep clearly more than one dense sub-matrix."""
        return sum(
            o.value * GROUPED_EFFICIENCY.get(o.blocks_kept, 0.6) if o.kind == "grouped" else o.value
            for o in self.parts
        )


def _items(
    scores: dict[str, torch.Tensor],
    names: list[list[str]],
    cfg: PruneConfig,
    head_values: list[torch.Tensor] | None = None,
) -> list[tuple[tuple[str, ...], list[Choice]]]:
    """Knapsack items with their options: per layer, the attention heads (or the Q/K and V/O pairs) and the
    FFN pair, or six single matrices."""
    items = []
    sub = not cfg.extra.get("no_submatrix")
    pair_kw = {"fractions": cfg.extra["pair_fractions"]} if "pair_fractions" in cfg.extra else {}
    whole_heads = cfg.attention == "heads" and not cfg.fixed_groups
    if whole_heads and head_values is None:
        raise ValueError("attention='heads' needs head_values (pipeline.pgb_scores gives them)")
    for li, layer in enumerate(names):
        by = dict(zip(MATRICES, layer))
        if whole_heads:
            shapes = [tuple(scores[n].shape) for n in layer[:4]]
            items.append(
                (tuple(layer[:4]), [Choice(tuple(p)) for p in head_options(shapes, head_values[li])])
            )
        if cfg.pairing and sub and not cfg.fixed_groups:
            for a, b, ax, bx in PAIRS[2:] if whole_heads else PAIRS:
                opts = pair_options(
                    scores[by[a]], scores[by[b]], ax, bx, cfg.group_counts, permute=cfg.permute, **pair_kw
                )
                items.append(((by[a], by[b]), [Choice(p) for p in opts]))
        else:
            gc = (cfg.fixed_groups,) if cfg.fixed_groups else cfg.group_counts
            for n in layer[4:] if whole_heads else layer:
                opts = matrix_options(
                    scores[n], gc, permute=cfg.permute, submatrix=sub and not cfg.fixed_groups
                )
                items.append(((n,), [Choice((o,)) for o in opts]))
    for i, (item_names, choices) in enumerate(items):
        if cfg.fixed_groups:
            G = cfg.fixed_groups
            k = min(G, max(1, round((1 - cfg.sparsity) * G * G)))  # density k / G^2 = 1 - s where it can
            choices = [c for c in choices if all((o.groups, o.blocks_kept) == (G, k) for o in c.parts)]
        elif not cfg.allow_drop:
            choices = [c for c in choices if all(o.kind != "empty" for o in c.parts)]
        if not choices:
            raise PgbertError(
                f"{item_names[0]} has no pruning option with fixed_groups={cfg.fixed_groups}: the group count "
                "must divide both sides of every matrix; choose another"
            )
        items[i] = (item_names, choices)
    return items


def choose_options(
    scores: dict[str, torch.Tensor],
    names: list[list[str]],
    cfg: PruneConfig,
    head_values: list[torch.Tensor] | None = None,
) -> dict[str, Option]:
    """Stages 2-3: grouping options per item and the knapsack choice; sublayers that drop free their
    partner matrices' budget, so allocation repeats with those forced empty."""
    total = sum(scores[n].numel() for layer in names for n in layer)
    budget = (1.0 - cfg.sparsity) * total
    items = _items(scores, names, cfg, head_values)
    forced: set[str] = set()
    for _ in range(4):
        cand = [
            [c for c in choices if all(o.kind == "empty" for o in c.parts)] if set(item) & forced else choices
            for item, choices in items
        ]
        pick = allocate(cand, budget)
        chosen = {n: o for (item, _), c, i in zip(items, cand, pick) for n, o in zip(item, c[i].parts)}
        new = set(forced)
        for layer in names:
            empty = {k: chosen[n].kind == "empty" for k, n in zip(MATRICES, layer)}
            if empty["v"] or empty["o"]:
                new |= set(layer[:4])
            if empty["ffn_in"] or empty["ffn_out"]:
                new |= set(layer[4:])
        if new == forced or not cfg.allow_drop:
            break
        forced = new
    return chosen


def masks_from_scores(
    scores: dict[str, torch.Tensor],
    names: list[list[str]],
    cfg: PruneConfig,
    head_values: list[torch.Tensor] | None = None,
):
    """Stages 2-4: grouping, allocation and the masks in original coordinates. head_values (per layer, one
    importance per attention head) are needed when cfg.attention is "heads"."""
    chosen = choose_options(scores, names, cfg, head_values)
    masks = {n: blocks_to_mask(tuple(scores[n].shape), chosen[n].blocks()) for layer in names for n in layer}
    return chosen, masks


def prune_model(
    dense: nn.Module, tokenizer, data: TaskData, cfg: PruneConfig
) -> tuple[nn.Module, dict, dict]:
    """Run PGB on a fine-tuned model. Returns (pruned model with fixed masks, masks, report)."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    names = prunable_names(dense)
    calib, check = calibration_split(data, cfg)
    calib_batches = batches_of(data, calib, tokenizer, dense, cfg)
    check_batches = batches_of(data, check, tokenizer, dense, cfg)
    metrics = {"dense": evaluate(dense, tokenizer, data, max_seq_length=cfg.max_seq_length)}

    t = time.perf_counter()  # 1. importance
    scores, head_values = pgb_scores(dense, calib_batches, names, cfg)
    timings["importance"] = time.perf_counter() - t

    t = time.perf_counter()  # 2-4. grouping by permutation, budget allocation, masks (re-permutation)
    chosen, masks = masks_from_scores(scores, names, cfg, head_values)
    pruned = copy.deepcopy(dense)
    apply_masks(pruned, masks)
    timings["grouping_allocation"] = time.perf_counter() - t
    metrics["masked"] = evaluate(pruned, tokenizer, data, max_seq_length=cfg.max_seq_length)

    comp_report: dict = {}
    t = time.perf_counter()  # 5. compensation
    if cfg.compensate:
        fit = calib_batches[: max(1, cfg.compensation_samples // cfg.batch_size)]
        comp_report = compensate(dense, pruned, masks, fit, check_batches, task_loss, quiet=cfg.quiet)
    timings["compensation"] = time.perf_counter() - t
    metrics["pruned"] = evaluate(pruned, tokenizer, data, max_seq_length=cfg.max_seq_length)

    t = time.perf_counter()  # 6. re-finetuning with the masks held fixed
    if cfg.finetune_epochs > 0:
        tcfg = TrainConfig(
            epochs=cfg.finetune_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            max_seq_length=cfg.max_seq_length,
            seed=cfg.seed,
            quiet=cfg.quiet,
            eval_steps=_eval_steps(len(data.train), cfg),
            kd_alpha=cfg.kd_alpha if cfg.kd else 0.0,
        )
        pruned, hist = finetune(pruned, tokenizer, data, tcfg, masks=masks, teacher=dense if cfg.kd else None)
        metrics["finetuned"] = evaluate(pruned, tokenizer, data, max_seq_length=cfg.max_seq_length)
        metrics["finetune_history"] = hist["evals"]
    timings["finetune"] = time.perf_counter() - t

    report = build_report(dense, pruned, names, scores, chosen, masks, cfg)
    report.update(
        metrics=metrics,
        timings_s=timings,
        compensation=comp_report,
        calibration={"examples": len(calib), "check_examples": len(check)},
    )
    return pruned, masks, report


def _eval_steps(n_train: int, cfg: PruneConfig) -> int:
    steps = max(1, int(n_train * cfg.finetune_epochs / cfg.batch_size))
    return max(1, steps // 4)  # four dev checks per re-finetune, early stop keeps the best


def build_report(dense, pruned, names, scores, chosen, masks, cfg: PruneConfig) -> dict:
    adapter = adapter_for(dense.config)
    heads = adapter.num_heads(dense.config)
    flat = [n for layer in names for n in layer]
    total = sum(masks[n].numel() for n in flat)
    kept = sum(int((pruned.get_parameter(n) != 0).sum()) for n in flat)
    mask_kept = sum(int(masks[n].sum()) for n in flat)
    zero_ok = all(bool((pruned.get_parameter(n)[masks[n] == 0] == 0).all()) for n in flat)
    matrices = []
    for n in flat:
        o, s = chosen[n], float(scores[n].double().sum()) or 1.0
        kept_score = float((scores[n].double() * masks[n]).sum()) / s
        ident = kept_score * (o.identity_value / o.value if o.value else 1.0)  # whole heads: no permutation
        matrices.append(
            {
                "name": n,
                "shape": list(scores[n].shape),
                "option": o.kind,
                "groups": o.groups,
                "blocks_kept": o.blocks_kept,
                "block_shape": list(o.shape),
                "density": o.cost / scores[n].numel(),
                "score_kept_fraction": kept_score,
                "score_kept_fraction_identity": ident,
            }
        )
    layers = [{k: masks[n] for k, n in zip(MATRICES, layer)} for layer in names]
    structs = [layer_structure(m, heads) for m in layers]
    dropped = [
        f"layer{i}.{part}"
        for i, st in enumerate(structs)
        for part, flag in (("attention", st["attention_dropped"]), ("ffn", st["ffn_dropped"]))
        if flag
    ]
    fr = flops_ratio(
        layers,
        heads,
        dense.config.hidden_size if hasattr(dense.config, "hidden_size") else dense.config.dim,
        cfg.flops_seq_len,
    )
    perm = [m["score_kept_fraction"] for m in matrices]
    ident = [m["score_kept_fraction_identity"] for m in matrices]
    return {
        "method": "pgb" if cfg.permute else "pgb-identity",
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "sparsity_target": cfg.sparsity,
        "sparsity_achieved": 1 - mask_kept / total,
        "params_total": total,
        "params_kept": mask_kept,
        "nonzero_kept": kept,
        "pruned_weights_exactly_zero": zero_ok,
        "flops_ratio": fr["flops_ratio"],
        "flops_seq_len": fr["seq_len"],
        "permutation_gain": {
            "mean_score_kept_fraction": sum(perm) / len(perm),
            "mean_score_kept_fraction_identity": sum(ident) / len(ident),
        },
        "matrices": matrices,
        "layers": structs,
        "dropped_sublayers": dropped,
    }

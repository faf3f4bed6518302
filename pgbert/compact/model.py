"""Build, save and load compact models (Hugging Face folders with their own modeling file)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from ..adapters import adapter_for
from ..errors import PgbertError
from .build import compact_layer, layer_masks
from .modeling_pgbert import (
    PgbertConfig,
    PgbertForQuestionAnswering,
    PgbertForSequenceClassification,
    _layer_list,
)

AUTO_MAP = {
    "AutoConfig": "modeling_pgbert.PgbertConfig",
    "AutoModelForSequenceClassification": "modeling_pgbert.PgbertForSequenceClassification",
    "AutoModelForQuestionAnswering": "modeling_pgbert.PgbertForQuestionAnswering",
}


def register_auto_classes() -> None:
    """Make pgbert's own classes the local code for model_type 'pgbert', so that transformers loads compact
    folders in this process (tokenizer and pipelines included) without asking to run their remote code."""
    AutoConfig.register("pgbert", PgbertConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(PgbertConfig, PgbertForSequenceClassification, exist_ok=True)
    AutoModelForQuestionAnswering.register(PgbertConfig, PgbertForQuestionAnswering, exist_ok=True)


register_auto_classes()


def _is_qa(model: nn.Module) -> bool:
    return hasattr(model, "qa_outputs") or "QuestionAnswering" in type(model).__name__


@torch.no_grad()
def to_compact(pruned: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """The compact model computing what `pruned` (weights times masks) computes."""
    adapter = adapter_for(pruned.config)
    heads, act = adapter.num_heads(pruned.config), adapter.activation(pruned.config)
    plans, layers = [], []
    for parts, m in zip((adapter.parts(x) for x in adapter.layers(pruned)), layer_masks(pruned, masks)):
        plan, layer = compact_layer(parts, m, heads, act)
        plans.append(plan)
        layers.append(layer)
    base = pruned.config.to_dict()
    for k in ("architectures", "transformers_version", "_name_or_path", "auto_map", "torch_dtype", "dtype"):
        base.pop(k, None)
    config = PgbertConfig(
        base_config=base,
        layer_plans=plans,
        auto_map=AUTO_MAP,
        id2label=pruned.config.id2label,
        label2id=pruned.config.label2id,
    )
    cls = PgbertForQuestionAnswering if _is_qa(pruned) else PgbertForSequenceClassification
    model = cls(config)
    state = {k: v for k, v in pruned.state_dict().items() if ".layer." not in k}
    missing, unexpected = model.inner.load_state_dict(state, strict=False)
    bad = [k for k in missing if ".layer." not in k]
    if bad or unexpected:
        raise RuntimeError(
            f"compact model does not match the pruned one: missing {bad}, unexpected {unexpected}"
        )
    target = _layer_list(model.inner, config.base_model_type)
    for i, layer in enumerate(layers):
        target[i] = layer
    return model.eval()


def save(model: nn.Module, folder: str | Path, tokenizer=None) -> None:
    """save_pretrained writes modeling_pgbert.py beside the weights (its classes register for it)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load(folder: str | Path) -> nn.Module:
    """Load a compact pgbert model folder (the same code `trust_remote_code` runs)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise PgbertError(
            f"{folder} is not a model folder (no config.json); give the --output of pgbert prune"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError:
        raise PgbertError(f"{cfg_path} is not valid JSON; the model folder is damaged") from None
    if cfg.get("model_type") != "pgbert":
        raise PgbertError(
            f"{folder} is not a pgbert compact model (model_type {cfg.get('model_type')!r}); "
            "load it with transformers, or compact it with `pgbert compact`"
        )
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise PgbertError(
            f"{weights} is missing; the model folder is incomplete, re-run pgbert prune/compact"
        )
    config = PgbertConfig.from_pretrained(folder)
    qa = any("QuestionAnswering" in a for a in (cfg.get("architectures") or []))
    cls = PgbertForQuestionAnswering if qa else PgbertForSequenceClassification
    try:
        return cls.from_pretrained(folder, config=config).eval()
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise PgbertError(
            f"could not read the weights in {folder} ({str(e).splitlines()[0][:120]}); "
            "the file is corrupt or truncated: re-run pgbert prune/compact"
        ) from None

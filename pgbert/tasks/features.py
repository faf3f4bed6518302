"""Turning examples into model inputs (tokenisation) and batches (dynamic padding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DataCollatorWithPadding

from .specs import TaskData


def encode_examples(examples: list[dict], tokenizer, kind: str, max_length: int = 128) -> list[dict]:
    """Tokenise classification / regression examples; labels are ints or floats."""
    texts = [ex["text"] for ex in examples]
    pairs = [ex["text_pair"] for ex in examples]
    enc = tokenizer(texts, pairs if pairs[0] is not None else None, truncation=True, max_length=max_length)
    dtype = float if kind == "regression" else int
    return [{**{k: enc[k][i] for k in enc}, "labels": dtype(ex["label"])} for i, ex in enumerate(examples)]


def train_features(
    data: TaskData, tokenizer, max_length: int, examples: list[dict] | None = None
) -> list[dict]:
    examples = data.train if examples is None else examples
    if data.spec.kind == "qa":
        from .squad import prepare_train_features

        return prepare_train_features(examples, tokenizer, max_length=max_length)
    return encode_examples(examples, tokenizer, data.spec.kind, max_length)


@dataclass
class Collator(DataCollatorWithPadding):
    """Dynamic padding that keeps float labels for regression; drops token types the model has no use for."""

    drop_token_types: bool = False

    def __call__(self, features):
        drop = ("token_type_ids",) if self.drop_token_types else ()
        features = [{k: v for k, v in f.items() if k not in drop} for f in features]
        batch = super().__call__(features)
        if "labels" in batch and batch["labels"].dtype == torch.float64:
            batch["labels"] = batch["labels"].float()
        return batch


def collator_for(tokenizer, model) -> Collator:
    """A collator for `model`: RoBERTa-style (one token type) and DistilBERT models get no token types."""
    cfg = model.config
    base = getattr(cfg, "base_config", None) or cfg.to_dict()
    drop = base.get("model_type") == "distilbert" or base.get("type_vocab_size", 2) <= 1
    return Collator(tokenizer, drop_token_types=drop)

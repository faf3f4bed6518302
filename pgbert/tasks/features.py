"""Turning examples into model inputs (tokenisation) and batches (dynamic padding)."""

from __future__ import annotations

import torch
from transformers import DataCollatorWithPadding

from .data import TaskData


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

        return prepare_train_features(examples, tokenizer, max_length=max(max_length, 128))
    return encode_examples(examples, tokenizer, data.spec.kind, max_length)


class Collator(DataCollatorWithPadding):
    """Dynamic padding that keeps float labels for regression and drops bookkeeping keys."""

    def __call__(self, features):
        features = [{k: v for k, v in f.items() if not k.startswith("_")} for f in features]
        batch = super().__call__(features)
        if "labels" in batch and batch["labels"].dtype == torch.float64:
            batch["labels"] = batch["labels"].float()
        return batch

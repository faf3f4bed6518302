"""Shared fixtures: tiny random models of every family, a small tokenizer, synthetic task files."""

from __future__ import annotations

import collections
import importlib
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    BertConfig,
    BertTokenizerFast,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
)

from pgbert.tasks import BUNDLED  # noqa: E402

FAMILIES = ("bert", "roberta", "distilbert", "electra")


def benchmark(name: str):
    """A script of benchmarks/ imported as a module (they are run as scripts, not installed)."""
    folder = str(Path(__file__).parent.parent / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def tokenizer():
    """A WordPiece tokenizer over the 800 most frequent words of the bundled data plus letters."""
    words = collections.Counter()
    with open(BUNDLED / "rt_sentiment" / "train.tsv", encoding="utf-8") as f:
        for line in f:
            words.update(line.lower().split("\t")[0].split())
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-\"():;")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + ["##" + c for c in letters]
    vocab += [w for w, _ in words.most_common(1200) if w.isalpha() and w not in vocab][:800]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=128)
    assert len(tok) == len(vocab)
    return tok


def tiny_config(family: str, vocab: int, num_labels: int = 2, layers: int = 2):
    common = dict(vocab_size=vocab, num_labels=num_labels, max_position_embeddings=160)
    if family == "distilbert":
        return DistilBertConfig(dim=64, n_layers=layers, n_heads=4, hidden_dim=128, pad_token_id=0, **common)
    cls = {"bert": BertConfig, "roberta": RobertaConfig, "electra": ElectraConfig}[family]
    kw = dict(
        hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128, pad_token_id=0
    )
    if family == "electra":
        kw["embedding_size"] = 64
    if family == "roberta":
        kw.update(type_vocab_size=1)
    return cls(**kw, **common)


def tiny_model(family: str, tokenizer, num_labels: int = 2, qa: bool = False, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    cfg = tiny_config(family, len(tokenizer), num_labels, layers)
    cls = AutoModelForQuestionAnswering if qa else AutoModelForSequenceClassification
    return cls.from_config(cfg).eval()


@pytest.fixture
def save_tiny(tmp_path, tokenizer):
    """Save a tiny model (with the tokenizer) to a folder and return the path."""

    def make(family="bert", num_labels=2, qa=False, name="model", **kw):
        m = tiny_model(family, tokenizer, num_labels, qa, **kw)
        path = tmp_path / name
        m.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path

    return make


SENT_WORDS = {1: ["good", "great", "fun", "best", "love"], 0: ["bad", "dull", "worst", "boring", "mess"]}


def sentiment_rows(n: int, seed: int = 0, labels=(0, 1)) -> list[dict]:
    """A trivially learnable task: the label is the class of the cue word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        y = rng.choice(labels)
        cue = rng.choice(SENT_WORDS[y % 2])
        filler = rng.sample(["the", "movie", "was", "a", "film", "and", "it", "story", "of"], 4)
        rows.append({"text": " ".join(filler[:2] + [cue] + filler[2:]), "label": y})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def squad_json(n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    paras = []
    for i in range(n):
        name = rng.choice(["anna", "paul", "maria", "john"])
        place = rng.choice(["paris", "rome", "london", "berlin"])
        ctx = f"the story is about {name} . {name} lived in {place} for many years ."
        paras.append(
            {
                "context": ctx,
                "qas": [
                    {
                        "id": f"q{i}",
                        "question": f"where did {name} live ?",
                        "answers": [{"text": place, "answer_start": ctx.index(place)}],
                    }
                ],
            }
        )
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}


def fast_config(**kw):
    """A PruneConfig sized for tiny models: few calibration examples, no re-finetuning, quiet."""
    from pgbert.config import PruneConfig

    base = dict(
        importance_steps=1,  # the default; T = 2 has its own test
        calib_samples=64,
        compensation_samples=32,
        check_samples=32,
        finetune_epochs=0,
        quiet=True,
        batch_size=16,
    )
    return PruneConfig(**{**base, **kw})


def hidden_error(model, ref, batches) -> float:
    """Summed squared difference of the encoders' last hidden states on labelled batches."""
    with torch.no_grad():
        return sum(
            float(
                (
                    model.base_model(**inputs_of(b)).last_hidden_state
                    - ref.base_model(**inputs_of(b)).last_hidden_state
                )
                .square()
                .sum()
            )
            for b in batches
        )


def inputs_of(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def run_without_pgbert(code: str, cwd, timeout: int = 300):
    """Run `code` in a fresh Python where importing pgbert fails (as on a machine without it)."""
    import subprocess
    import sys
    import textwrap

    guard = textwrap.dedent("""
        import builtins
        real = builtins.__import__
        def guard(name, *a, **k):
            if name == "pgbert" or name.startswith("pgbert."):
                raise ImportError("pgbert is not importable here")
            return real(name, *a, **k)
        builtins.__import__ = guard
    """)
    return subprocess.run(
        [sys.executable, "-c", guard + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture
def files(tmp_path):
    """A small labelled JSONL file (60 sentiment rows), used as both train and dev file."""
    return write_jsonl(tmp_path / "tr.jsonl", sentiment_rows(60))

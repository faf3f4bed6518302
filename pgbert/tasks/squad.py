"""SQuAD v1.1 extractive QA: loading, the standard sliding-window preprocessing, answer decoding, EM/F1."""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path

import numpy as np

from ..errors import PgbertError
from .specs import TaskData, TaskSpec


def _parse_squad(obj, source: str) -> list[dict]:
    if not isinstance(obj, dict) or "data" not in obj:
        raise PgbertError(f"{source} is not SQuAD v1.1 JSON (no top-level 'data'); give a SQuAD-format file")
    out = []
    for article in obj["data"]:
        for para in article.get("paragraphs", []):
            for qa in para.get("qas", []):
                answers = qa.get("answers", [])
                out.append(
                    {
                        "id": str(qa["id"]),
                        "question": qa["question"],
                        "context": para["context"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    }
                )
    return out


def _read(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PgbertError(f"SQuAD file {path} not found; check --data-dir or --train-file/--dev-file")
    try:
        with open(path, encoding="utf-8") as f:
            return _parse_squad(json.load(f), str(path))
    except json.JSONDecodeError as e:
        raise PgbertError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file") from None


def load_squad_files(spec: TaskSpec, train_file: str, dev_file: str) -> TaskData:
    train = _read(train_file)
    if any(not ex["answers"]["text"] for ex in train):
        raise PgbertError(f"{train_file} has questions without answers; SQuAD v1.1 training needs one each")
    return TaskData(spec, train, {"dev": _read(dev_file)}, None, f"{train_file} + {dev_file}")


def load_squad_dir(spec: TaskSpec, folder: str) -> TaskData:
    folder = Path(folder)
    return load_squad_files(spec, str(folder / "train-v1.1.json"), str(folder / "dev-v1.1.json"))


def squad_from_hub(spec: TaskSpec, ds) -> TaskData:  # pragma: no cover - needs the network
    conv = lambda split: [  # noqa: E731
        {"id": r["id"], "question": r["question"], "context": r["context"], "answers": r["answers"]}
        for r in split
    ]
    return TaskData(spec, conv(ds["train"]), {"dev": conv(ds["validation"])}, None, "hub:rajpurkar/squad")


# ---------------------------------------------------------------- features


def prepare_train_features(
    examples: list[dict], tokenizer, max_length: int = 384, stride: int | None = None
) -> list[dict]:
    """Tokenise question + context with a sliding window; label each window with the answer's token span
    (or the CLS position when the answer is not inside the window)."""
    pad_right = tokenizer.padding_side == "right"
    stride = max_length // 3 if stride is None else stride  # SQuAD's standard 128 at 384 tokens
    enc = tokenizer(
        [ex["question"].lstrip() for ex in examples],
        [ex["context"] for ex in examples],
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    feats = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        seq_ids = enc.sequence_ids(i)
        ids = enc["input_ids"][i]
        cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        start_char = ex["answers"]["answer_start"][0]
        end_char = start_char + len(ex["answers"]["text"][0])
        ctx = [j for j, s in enumerate(seq_ids) if s == 1]
        start_pos = end_pos = cls
        if ctx and offsets[ctx[0]][0] <= start_char and offsets[ctx[-1]][1] >= end_char:
            start_pos = next(j for j in ctx if offsets[j][1] > start_char)
            end_pos = next(j for j in reversed(ctx) if offsets[j][0] < end_char)
        feat = {k: enc[k][i] for k in enc if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        feat.update(start_positions=start_pos, end_positions=end_pos)
        feats.append(feat)
    return feats


def prepare_eval_features(examples: list[dict], tokenizer, max_length: int = 384, stride: int | None = None):
    """Windows for evaluation plus, per window, its example index and context-only offsets."""
    stride = max_length // 3 if stride is None else stride
    enc = tokenizer(
        [ex["question"].lstrip() for ex in examples],
        [ex["context"] for ex in examples],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    feats, meta = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        seq_ids = enc.sequence_ids(i)
        feats.append({k: enc[k][i] for k in enc if k not in ("offset_mapping", "overflow_to_sample_mapping")})
        meta.append(
            {
                "example": enc["overflow_to_sample_mapping"][i],
                "offsets": [o if seq_ids[j] == 1 else None for j, o in enumerate(offsets)],
            }
        )
    return feats, meta


def decode_answers(
    examples: list[dict],
    meta: list[dict],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Best-scoring valid span per example over all its windows."""
    best: dict[int, tuple[float, str]] = {}
    for f, m in enumerate(meta):
        offsets, ctx = m["offsets"], examples[m["example"]]["context"]
        s_idx = np.argsort(start_logits[f])[::-1][:n_best]
        e_idx = np.argsort(end_logits[f])[::-1][:n_best]
        for s in s_idx:
            for e in e_idx:
                if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                    continue
                if e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_logits[f][s] + end_logits[f][e])
                if m["example"] not in best or score > best[m["example"]][0]:
                    best[m["example"]] = (score, ctx[offsets[s][0] : offsets[e][1]])
    return {ex["id"]: best.get(i, (0.0, ""))[1] for i, ex in enumerate(examples)}


# ---------------------------------------------------------------- metrics (SQuAD v1.1 definitions)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(pred: str, truth: str) -> float:
    p, t = normalize_answer(pred).split(), normalize_answer(truth).split()
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], examples: list[dict]) -> dict[str, float]:
    em = f1 = 0.0
    for ex in examples:
        truths = ex["answers"]["text"] or [""]
        pred = predictions.get(ex["id"], "")
        em += max(float(normalize_answer(pred) == normalize_answer(t)) for t in truths)
        f1 += max(_f1(pred, t) for t in truths)
    n = max(len(examples), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}

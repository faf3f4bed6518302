"""Task definitions: GLUE tasks, SQuAD v1.1, custom file tasks and the bundled sentiment task."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TsvFormat:
    """A GLUE-format TSV folder: file names and the columns (header names, or indices if no header)."""

    train: str
    dev: dict[str, str]  # dev split name -> file name
    text: str | int
    pair: str | int | None
    label: str | int
    header: bool = True


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "classification" | "regression" | "qa"
    pair: bool = False
    metrics: tuple[str, ...] = ("accuracy",)
    main_metric: str = "accuracy"
    label_names: tuple[str, ...] | None = None  # fixed label set (None: learnt from the train split)
    tsv_labels: tuple[str, ...] | None = None  # how labels are spelt in GLUE TSV files, same order
    hub: tuple[str, str | None] | None = None  # (dataset, config) on the Hugging Face hub
    hub_columns: tuple[str, str | None, str] | None = None  # text, pair, label
    hub_dev: tuple[str, ...] = ("validation",)
    tsv: TsvFormat | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int | None:
        if self.kind == "regression":
            return 1
        if self.kind == "qa":
            return 2
        return len(self.label_names) if self.label_names else None


def _glue(name, pair, metrics, main, labels, tsv, columns, tsv_labels=None, dev=("validation",)):
    return TaskSpec(
        name=name,
        kind="regression" if name == "stsb" else "classification",
        pair=pair,
        metrics=metrics,
        main_metric=main,
        label_names=labels,
        tsv_labels=tsv_labels or (tuple(str(i) for i in range(len(labels))) if labels else None),
        hub=("nyu-mll/glue", name),
        hub_columns=columns,
        hub_dev=dev,
        tsv=tsv,
    )


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")

TASKS: dict[str, TaskSpec] = {
    "cola": _glue(
        "cola",
        False,
        ("matthews",),
        "matthews",
        ("unacceptable", "acceptable"),
        TsvFormat("train.tsv", {"dev": "dev.tsv"}, 3, None, 1, header=False),
        ("sentence", None, "label"),
        tsv_labels=_BIN,
    ),
    "sst2": _glue(
        "sst2",
        False,
        ("accuracy",),
        "accuracy",
        ("negative", "positive"),
        TsvFormat("train.tsv", {"dev": "dev.tsv"}, "sentence", None, "label"),
        ("sentence", None, "label"),
        tsv_labels=_BIN,
    ),
    "mrpc": _glue(
        "mrpc",
        True,
        ("accuracy", "f1"),
        "f1",
        ("not_equivalent", "equivalent"),
        TsvFormat("train.tsv", {"dev": "dev.tsv"}, "#1 String", "#2 String", "Quality"),
        ("sentence1", "sentence2", "label"),
        tsv_labels=_BIN,
    ),
    "stsb": _glue(
        "stsb",
        True,
        ("pearson", "spearman"),
        "pearson",
        None,
        TsvFormat("train.tsv", {"dev": "dev.tsv"}, "sentence1", "sentence2", "score"),
        ("sentence1", "sentence2", "label"),
    ),
    "qqp": _glue(
        "qqp",
        True,
        ("accuracy", "f1"),
        "f1",
        ("not_duplicate", "duplicate"),
        TsvFormat("train.tsv", {"dev": "dev.tsv"}, "question1", "question2", "is_duplicate"),
        ("question1", "question2", "label"),
        tsv_labels=_BIN,
    ),
    "mnli": _glue(
        "mnli",
        True,
        ("accuracy",),
        "accuracy",
        _MNLI,
        TsvFormat(
            "train.tsv",
            {"matched": "dev_matched.tsv", "mismatched": "dev_mismatched.tsv"},
            "sentence1",
            "sentence2",
            "gold_label",
        ),
        ("premise", "hypothesis", "label"),
        tsv_labels=_MNLI,
        dev=("validation_matched", "validation_mismatched"),
    ),
    "qnli": _glue(
        "qnli",
        True,
        ("accuracy",),
        "accuracy",
        _NLI2,
        TsvFormat("train.tsv", {"dev": "dev.tsv"}, "question", "sentence", "label"),
        ("question", "sentence", "label"),
        tsv_labels=_NLI2,
    ),
    "rte": _glue(
        "rte",
        True,
        ("accuracy",),
        "accuracy",
        _NLI2,
        TsvFormat("train.tsv", {"dev": "dev.tsv"}, "sentence1", "sentence2", "label"),
        ("sentence1", "sentence2", "label"),
        tsv_labels=_NLI2,
    ),
    "wnli": _glue(
        "wnli",
        True,
        ("accuracy",),
        "accuracy",
        ("not_entailment", "entailment"),
        TsvFormat("train.tsv", {"dev": "dev.tsv"}, "sentence1", "sentence2", "label"),
        ("sentence1", "sentence2", "label"),
        tsv_labels=_BIN,
    ),
    "squad": TaskSpec(
        name="squad",
        kind="qa",
        metrics=("exact_match", "f1"),
        main_metric="f1",
        hub=("rajpurkar/squad", None),
    ),
    # Bundled default: Rotten Tomatoes sentences (Pang & Lee) with VADER's human scores, score > 0.
    "rt-sentiment": TaskSpec(
        name="rt-sentiment",
        kind="classification",
        metrics=("accuracy", "f1"),
        main_metric="accuracy",
        label_names=("negative", "positive"),
        tsv_labels=_BIN,
        tsv=TsvFormat("train.tsv", {"dev": "dev.tsv"}, "sentence", None, "label"),
    ),
    # Custom file tasks: columns come from --text-column / --text-pair-column / --label-column.
    "classification": TaskSpec(name="classification", kind="classification", metrics=("accuracy", "f1")),
    "regression": TaskSpec(
        name="regression", kind="regression", metrics=("pearson", "spearman"), main_metric="pearson"
    ),
}


def get_task(name: str) -> TaskSpec:
    from ..errors import PgbertError

    if name not in TASKS:
        raise PgbertError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[dict]
    dev: dict[str, list[dict]]
    label_names: list[str] | None = None
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        if self.spec.kind == "regression":
            return 1
        if self.spec.kind == "qa":
            return 2
        return len(self.label_names or [])

    @property
    def main_dev(self) -> str:
        return next(iter(self.dev))

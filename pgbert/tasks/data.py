"""Loading task data: the Hugging Face hub, GLUE TSV folders, SQuAD JSON and custom CSV/JSON/JSONL files.

Every source ends as plain lists of examples:
    classification / regression: {"text": str, "text_pair": str | None, "label": int | float}
    qa: {"id": str, "question": str, "context": str, "answers": {"text": [...], "answer_start": [...]}}
"""

from __future__ import annotations

import csv
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PgbertError
from .specs import TaskData, TaskSpec, get_task
from .squad import load_squad_dir, load_squad_files, squad_from_hub

BUNDLED = Path(__file__).resolve().parent.parent / "data"


@dataclass
class DataOptions:
    data_dir: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_train_samples: int | None = None
    max_dev_samples: int | None = None
    seed: int = 0


def load_task(task: str, opts: DataOptions | None = None) -> TaskData:
    """Load train and dev splits of `task` from the source the options name."""
    spec = get_task(task)
    opts = opts or DataOptions()
    if opts.train_file or opts.dev_file:
        data = _from_files(spec, opts)
    elif spec.kind == "qa" and opts.data_dir:
        data = load_squad_dir(spec, opts.data_dir)
    elif opts.data_dir or spec.name == "rt-sentiment":
        data = _from_tsv_dir(spec, Path(opts.data_dir) if opts.data_dir else BUNDLED / "rt_sentiment")
    elif spec.hub:
        data = _from_hub(spec)
    else:
        raise PgbertError(f"task '{spec.name}' needs data: pass --train-file and --dev-file")
    return _finish(data, opts)


def _finish(data: TaskData, opts: DataOptions) -> TaskData:
    rng = random.Random(opts.seed)
    if opts.max_train_samples and len(data.train) > opts.max_train_samples:
        data.train = rng.sample(data.train, opts.max_train_samples)
    if opts.max_dev_samples:
        data.dev = {k: v[: opts.max_dev_samples] for k, v in data.dev.items()}
    if not data.train:
        raise PgbertError(f"the train split of {data.source} is empty; give a file with examples")
    for name, rows in data.dev.items():
        if not rows:
            raise PgbertError(f"the dev split '{name}' of {data.source} is empty; give a file with examples")
    return data


# ---------------------------------------------------------------- labels


def _encode_labels(spec: TaskSpec, train_raw: list, dev_raw: dict[str, list], source: str):
    """Map raw labels to ints (classification) or floats (regression); return (train, dev, names)."""
    if spec.kind == "regression":
        try:
            conv = lambda xs: [float(x) for x in xs]  # noqa: E731
            return conv(train_raw), {k: conv(v) for k, v in dev_raw.items()}, None
        except ValueError as e:
            raise PgbertError(f"regression labels in {source} must be numbers ({e})") from None
    if spec.label_names:
        names = list(spec.label_names)
        spelled = {str(s): i for i, s in enumerate(spec.tsv_labels or names)}
        spelled.update({n: i for i, n in enumerate(names)})
    else:  # custom task: the label set is the train split's, sorted for determinism
        uniq = sorted({str(x) for x in train_raw}, key=_natural_key)
        names, spelled = uniq, {s: i for i, s in enumerate(uniq)}

    def enc(xs, split):
        out = []
        for x in xs:
            key = str(x)
            if key not in spelled:
                if split == "train" and spec.label_names:
                    raise PgbertError(
                        f"label '{key}' in the train split of {source} is not one of {names}; fix the label column"
                    )
                raise PgbertError(
                    f"label '{key}' in the {split} split of {source} does not occur in the train split; "
                    "add examples of it to the train file or remove it from the dev file"
                )
            out.append(spelled[key])
        return out

    return enc(train_raw, "train"), {k: enc(v, k) for k, v in dev_raw.items()}, names


def _natural_key(s: str):
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)


def _rows_to_examples(spec, rows_by_split, cols, source) -> TaskData:
    text_c, pair_c, label_c = cols
    raw = {}
    for split, rows in rows_by_split.items():
        raw[split] = (
            [str(r[text_c]) for r in rows],
            [str(r[pair_c]) for r in rows] if pair_c is not None else [None] * len(rows),
            [r[label_c] for r in rows],
        )
    train_labels, dev_labels, names = _encode_labels(
        spec, raw["train"][2], {k: v[2] for k, v in raw.items() if k != "train"}, source
    )
    labels = {"train": train_labels, **dev_labels}
    ex = {
        split: [
            {"text": t, "text_pair": p, "label": y}
            for t, p, y in zip(raw[split][0], raw[split][1], labels[split])
        ]
        for split in raw
    }
    train = ex.pop("train")
    return TaskData(spec, train, ex, names, source)


# ---------------------------------------------------------------- sources


def _read_tsv(path: Path, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r]
    return (rows[0], rows[1:]) if header else (None, rows)


def _from_tsv_dir(spec: TaskSpec, folder: Path) -> TaskData:
    if spec.tsv is None:
        raise PgbertError(f"task '{spec.name}' has no TSV format; use --train-file/--dev-file")
    fmt = spec.tsv
    files = {"train": folder / fmt.train, **{k: folder / v for k, v in fmt.dev.items()}}
    for path in files.values():
        if not path.is_file():
            raise PgbertError(f"{path} not found; --data-dir must be a GLUE-format folder for '{spec.name}'")
    rows_by_split, cols = {}, None
    for split, path in files.items():
        head, rows = _read_tsv(path, fmt.header)
        if head is not None:
            idx = {}
            for c in (fmt.text, fmt.pair, fmt.label):
                if c is not None and c not in head:
                    raise PgbertError(f"column '{c}' missing in {path}; its header is {head}")
                if c is not None:
                    idx[c] = head.index(c)
            cols = tuple(idx[c] if c is not None else None for c in (fmt.text, fmt.pair, fmt.label))
        else:
            cols = (fmt.text, fmt.pair, fmt.label)
        width = max(c for c in cols if c is not None) + 1
        rows_by_split[split] = [r for r in rows if len(r) >= width]
    return _rows_to_examples(spec, rows_by_split, cols, str(folder))


def _read_table(path: Path) -> list[dict]:
    if not path.is_file():
        raise PgbertError(f"data file {path} not found; check --train-file/--dev-file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            if suffix == ".tsv":  # TSV as GLUE writes it: one row a line, quotes are text
                return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            return list(csv.DictReader(f))
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    rows.append(_json(line, path, "one JSON object per line", line=n))
        if not all(isinstance(r, dict) for r in rows):
            raise PgbertError(f"{path}: every line must be a JSON object with the text and label fields")
        return rows
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            obj = _json(f.read(), path, "a JSON list of records")
        if isinstance(obj, dict) and "data" in obj:
            obj = obj["data"]
        if isinstance(obj, list):
            return obj
    raise PgbertError(f"{path}: unsupported data file; use .csv, .tsv, .json (a list of records) or .jsonl")


def _json(text: str, path: Path, expected: str, line: int | None = None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {line or e.lineno}, column {e.colno}"
        raise PgbertError(f"{path}: invalid JSON at {where} ({e.msg}); expected {expected}") from None


def _from_files(spec: TaskSpec, opts: DataOptions) -> TaskData:
    if not (opts.train_file and opts.dev_file):
        raise PgbertError("pass both --train-file and --dev-file")
    if spec.kind == "qa":
        return load_squad_files(spec, opts.train_file, opts.dev_file)
    defaults = spec.hub_columns or ("text", None, "label")
    text_c = opts.text_column or defaults[0]
    pair_c = opts.text_pair_column or (defaults[1] if spec.pair else None)
    label_c = opts.label_column or defaults[2]
    rows = {"train": _read_table(Path(opts.train_file)), "dev": _read_table(Path(opts.dev_file))}
    for split, path in (("train", opts.train_file), ("dev", opts.dev_file)):
        if not rows[split]:
            raise PgbertError(f"the {split} split {path} is empty; give a file with examples")
        have = list(rows[split][0].keys())
        for flag, c in (
            ("--text-column", text_c),
            ("--text-pair-column", pair_c),
            ("--label-column", label_c),
        ):
            if c is not None and c not in have:
                raise PgbertError(f"column '{c}' missing in {path} (columns: {have}); set {flag}")
    data = _rows_to_examples(spec, rows, (text_c, pair_c, label_c), f"{opts.train_file} + {opts.dev_file}")
    data.info["columns"] = {"text": text_c, "text_pair": pair_c, "label": label_c}
    return data


def _from_hub(spec: TaskSpec) -> TaskData:  # pragma: no cover - needs the network
    import datasets

    name, config = spec.hub
    try:
        ds = datasets.load_dataset(name, config)
    except Exception as e:
        raise PgbertError(
            f"could not load '{name}' from the Hugging Face hub ({type(e).__name__}); "
            "offline, pass --data-dir or --train-file/--dev-file"
        ) from None
    if spec.kind == "qa":
        return squad_from_hub(spec, ds)
    splits = {"train": "train", **{s: s for s in spec.hub_dev}}
    label_c = spec.hub_columns[2]
    rows = {k: [r for r in ds[v] if r[label_c] != -1] for k, v in splits.items()}
    if spec.label_names:  # hub labels are indices: spell them as names
        rows = {k: [{**r, label_c: spec.label_names[r[label_c]]} for r in v] for k, v in rows.items()}
    return _rows_to_examples(spec, rows, spec.hub_columns, f"hub:{name}/{config}")

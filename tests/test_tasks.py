import json

import numpy as np
import pytest
from conftest import benchmark, squad_json, write_jsonl

from pgbert.errors import PgbertError
from pgbert.tasks import TASKS, DataOptions, load_task
from pgbert.tasks.metrics import glue_metrics
from pgbert.tasks.squad import normalize_answer, squad_metrics

GLUE_FILES = {
    "cola": ("", lambda i: f"src\t{i % 2}\t*\tsentence number {i}"),
    "sst2": ("sentence\tlabel", lambda i: f"a movie {i}\t{i % 2}"),
    "mrpc": (
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        lambda i: f"{i % 2}\t1\t2\tfirst {i}\tsecond {i}",
    ),
    "stsb": (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
        lambda i: f"{i}\tg\tf\ty\t0\ts\ts\tfirst {i}\tsecond {i}\t{i % 5}.5",
    ),
    "qqp": (
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        lambda i: f"{i}\t1\t2\twhy {i}\thow {i}\t{i % 2}",
    ),
    "qnli": (
        "index\tquestion\tsentence\tlabel",
        lambda i: f"{i}\twhat {i}\tthis {i}\t{['entailment', 'not_entailment'][i % 2]}",
    ),
    "rte": (
        "index\tsentence1\tsentence2\tlabel",
        lambda i: f"{i}\tfirst {i}\tsecond {i}\t{['entailment', 'not_entailment'][i % 2]}",
    ),
    "wnli": ("index\tsentence1\tsentence2\tlabel", lambda i: f"{i}\tfirst {i}\tsecond {i}\t{i % 2}"),
    "mnli": (
        "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label",
        lambda i: f"{i}\tp\tq\tg\tfirst {i}\tsecond {i}\t{['entailment', 'neutral', 'contradiction'][i % 3]}",
    ),
}


def write_glue(folder, task, n=12):
    header, row = GLUE_FILES[task]
    folder.mkdir(parents=True, exist_ok=True)
    files = ["train.tsv"] + (["dev_matched.tsv", "dev_mismatched.tsv"] if task == "mnli" else ["dev.tsv"])
    for f in files:
        lines = ([header] if header else []) + [row(i) for i in range(n)]
        (folder / f).write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
def test_glue_tsv_folders_load(tmp_path, task):
    data = load_task(task, DataOptions(data_dir=str(write_glue(tmp_path / task, task))))
    assert len(data.train) == 12
    spec = TASKS[task]
    ex = data.train[1]
    assert (ex["text_pair"] is not None) == spec.pair
    if task == "stsb":
        assert ex["label"] == 1.5
    elif task == "mnli":
        assert set(data.dev) == {"matched", "mismatched"}
        assert [e["label"] for e in data.train[:3]] == [0, 1, 2]
    else:
        assert ex["label"] == 1 and data.train[0]["label"] == 0


def test_bundled_sentiment_task():
    data = load_task("rt-sentiment")
    assert len(data.train) == 9568 and len(data.dev["dev"]) == 1000
    assert data.label_names == ["negative", "positive"]
    assert 0.45 < np.mean([e["label"] for e in data.train]) < 0.55


def test_custom_jsonl_string_labels(tmp_path):
    rows = [{"t": f"text {i}", "y": ["red", "green", "blue"][i % 3]} for i in range(9)]
    tr, dv = write_jsonl(tmp_path / "tr.jsonl", rows), write_jsonl(tmp_path / "dv.jsonl", rows[:3])
    data = load_task(
        "classification", DataOptions(train_file=str(tr), dev_file=str(dv), text_column="t", label_column="y")
    )
    assert data.label_names == ["blue", "green", "red"]
    assert [e["label"] for e in data.dev["dev"]] == [2, 1, 0]


def test_custom_csv_pair_and_regression(tmp_path):
    (tmp_path / "a.csv").write_text("q,p,s\nhello,world,1.5\nfoo,bar,3\n")
    data = load_task(
        "regression",
        DataOptions(
            train_file=str(tmp_path / "a.csv"),
            dev_file=str(tmp_path / "a.csv"),
            text_column="q",
            text_pair_column="p",
            label_column="s",
        ),
    )
    assert data.train[1] == {"text": "foo", "text_pair": "bar", "label": 3.0}


@pytest.mark.parametrize(
    "rows_train,rows_dev,match",
    [
        ([{"text": "a", "label": "x"}], [{"text": "b", "label": "y"}], "does not occur in the train split"),
        ([{"text": "a", "label": "x"}], [], "empty"),
        ([{"txt": "a", "label": "x"}], [{"txt": "b", "label": "x"}], "column 'text' missing"),
    ],
)
def test_custom_file_errors(tmp_path, rows_train, rows_dev, match):
    tr = write_jsonl(tmp_path / "tr.jsonl", rows_train)
    dv = write_jsonl(tmp_path / "dv.jsonl", rows_dev)
    with pytest.raises(PgbertError, match=match):
        load_task("classification", DataOptions(train_file=str(tr), dev_file=str(dv)))


def test_unknown_task():
    with pytest.raises(PgbertError, match="unknown task 'sst3'"):
        load_task("sst3")


def test_squad_files(tmp_path):
    (tmp_path / "train-v1.1.json").write_text(json.dumps(squad_json(5)))
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(squad_json(3, seed=1)))
    data = load_task("squad", DataOptions(data_dir=str(tmp_path)))
    ex = data.train[0]
    start = ex["answers"]["answer_start"][0]
    assert ex["context"][start : start + len(ex["answers"]["text"][0])] == ex["answers"]["text"][0]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PgbertError, match="not valid JSON"):
        load_task(
            "squad", DataOptions(train_file=str(tmp_path / "bad.json"), dev_file=str(tmp_path / "bad.json"))
        )


def test_glue_metrics_known_values():
    preds, labels = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    m = glue_metrics(("accuracy", "f1", "matthews"), preds, labels)
    assert m["accuracy"] == 0.75
    assert m["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1
    assert m["matthews"] == pytest.approx(1 / np.sqrt(3))  # (2*1 - 1*0) / sqrt(3*2*1*2)
    r = glue_metrics(("pearson", "spearman"), np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert r["spearman"] == pytest.approx(1.0) and 0.95 < r["pearson"] < 1.0


def test_squad_metrics_known_values():
    assert normalize_answer("The  Eiffel, Tower!") == "eiffel tower"
    ex = [{"id": "1", "answers": {"text": ["Eiffel Tower"]}}, {"id": "2", "answers": {"text": ["in Paris"]}}]
    m = squad_metrics({"1": "the eiffel tower", "2": "Paris France"}, ex)
    assert m["exact_match"] == 50.0
    assert m["f1"] == pytest.approx(100 * (1.0 + 0.5) / 2)  # second: precision 1/2, recall 1/2


def test_tsv_quotes_are_text(tmp_path):
    """A TSV sentence with a lone double quote stays one row (GLUE-style TSV: no quoting)."""
    from pgbert.tasks import DataOptions, load_task

    f = tmp_path / "t.tsv"
    f.write_text('sentence\tlabel\nhe said "great\t1\nand it was\t0\n"bad" really\t0\n')
    d = load_task("classification", DataOptions(train_file=str(f), dev_file=str(f), text_column="sentence"))
    assert [e["text"] for e in d.train] == ['he said "great', "and it was", '"bad" really']


def test_vader_benchmark_tasks_conversion():
    """benchmarks/vader_tasks.py: binary drops zero scores and labels score > 0; the score task keeps all."""
    vader_tasks = benchmark("vader_tasks")

    rows = vader_tasks.read_ground_truth("1\t1.5\tgood one\n2\t0.0\tmeh\n\n3\t-2.25\tbad one\n")
    assert rows == [("good one", 1.5), ("meh", 0.0), ("bad one", -2.25)]
    binary = vader_tasks.to_task(rows, "binary", 1)
    assert sorted(binary["dev"] + binary["train"]) == [("bad one", "0"), ("good one", "1")]
    score = vader_tasks.to_task(rows, "score", 1)
    assert len(score["dev"]) == 1 and sorted(score["dev"] + score["train"])[0] == ("bad one", "-2.25")

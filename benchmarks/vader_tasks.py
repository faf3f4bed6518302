"""Two more real tasks for the benchmarks, from the human-rated snippets in the vaderSentiment 3.3.2 source
distribution (C.J. Hutto, MIT licence; Hutto & Gilbert, ICWSM 2014). Not bundled in the package: this
script fetches the source archive with pip and writes TSV files (columns `sentence`, `label`):

  amazon-sentiment/  3,708 Amazon product-review sentences, binary by mean score > 0 (zeros dropped)
  rt-score/          10,605 Rotten Tomatoes sentences (Pang & Lee, 2005), regression on the mean
                     human score in [-4, 4] (Pearson / Spearman)

Each has a fixed dev split (seed 20261201). Use them as

    python benchmarks/vader_tasks.py --output runs/data
    pgbert finetune minilm --task classification --train-file runs/data/amazon-sentiment/train.tsv \
        --dev-file runs/data/amazon-sentiment/dev.tsv --text-column sentence --label-column label ...
    pgbert finetune minilm --task regression --train-file runs/data/rt-score/train.tsv ... (same columns)
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "vaderSentiment==3.3.2"
SEED = 20261201
FILES = {
    "amazon-sentiment": ("amazonReviewSnippets_GroundTruth.txt", "binary", 700),
    "rt-score": ("movieReviewSnippets_GroundTruth.txt", "score", 1000),
}


def read_ground_truth(text: str) -> list[tuple[str, float]]:
    """Rows of a *_GroundTruth.txt file: id <tab> mean score <tab> sentence."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            _, score, sentence = line.split("\t", 2)
            rows.append((sentence.strip(), float(score)))
    return rows


def to_task(rows: list[tuple[str, float]], kind: str, dev_size: int) -> dict[str, list[tuple[str, str]]]:
    """Train / dev rows (sentence, label): binary drops zero scores and labels score > 0; score keeps it."""
    if kind == "binary":
        out = [(s, str(int(y > 0))) for s, y in rows if y != 0]
    else:
        out = [(s, f"{y:g}") for s, y in rows]
    random.Random(SEED).shuffle(out)
    return {"dev": out[:dev_size], "train": out[dev_size:]}


def write(folder: Path, splits: dict[str, list[tuple[str, str]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        with open(folder / f"{name}.tsv", "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{s}\t{y}\n" for s, y in part)


def fetch(tmp: Path) -> Path:
    """The ICWSM 2014 folder inside the vaderSentiment source archive (pip download, no install)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--no-binary",
        ":all:",
        SDIST,
        "-d",
        str(tmp),
    ]
    subprocess.run(cmd, check=True)
    with tarfile.open(next(tmp.glob("vaderSentiment-*.tar.gz"))) as t:
        t.extractall(tmp, filter="data")
    inner = next(tmp.glob("vaderSentiment-*/additional_resources/hutto_ICWSM_2014.tar.gz"))
    with tarfile.open(inner) as t:
        t.extractall(tmp, filter="data")
    return tmp / "hutto_ICWSM_2014"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="runs/data")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = fetch(Path(tmp))
        for name, (file, kind, dev) in FILES.items():
            splits = to_task(read_ground_truth((src / file).read_text(encoding="utf-8")), kind, dev)
            write(Path(a.output) / name, splits)
            print(
                f"{name}: {len(splits['train'])} train, {len(splits['dev'])} dev -> {Path(a.output) / name}"
            )


if __name__ == "__main__":
    main()

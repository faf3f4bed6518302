"""Rebuild pgbert/data/rt_sentiment from VADER's movieReviewSnippets_GroundTruth.txt.

Get the file: pip download --no-deps --no-binary :all: vaderSentiment==3.3.2, then unpack
additional_resources/hutto_ICWSM_2014.tar.gz from the source archive.
"""

import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "pgbert" / "data" / "rt_sentiment"


def main(src: str) -> None:
    rows = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            _, score, text = line.split("\t", 2)
            if float(score) != 0:
                rows.append((text.strip(), int(float(score) > 0)))
    random.Random(20261129).shuffle(rows)
    for name, part in (("train", rows[1000:]), ("dev", rows[:1000])):
        with open(OUT / f"{name}.tsv", "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{t}\t{label}\n" for t, label in part)


if __name__ == "__main__":
    main(sys.argv[1])

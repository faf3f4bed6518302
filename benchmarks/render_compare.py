"""Re-render a `pgbert compare` results.json as markdown (summary and paired tables) with the current
formatting, e.g. for the README:

    python benchmarks/render_compare.py runs/compare11-oneshot/results.json > benchmarks/results/compare-minilm-rt.md
"""

import json
import sys

from pgbert.comparison import markdown, paired, summarise

if __name__ == "__main__":
    res = json.load(open(sys.argv[1]))
    rows = res["rows"]
    metric = rows[0]["metric"] if rows else "accuracy"
    print(markdown(summarise(rows), res["dense"], metric, paired(rows)), end="")

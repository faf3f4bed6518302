"""Do block-diagonal (grouped) options ever beat one sub-matrix? Per FFN pair of a real model: each grouped
option's kept score (k of G permuted blocks, before the knapsack's runtime discount) over the best pair
sub-matrix that keeps no more weights, and what the knapsack chose at each sparsity.

    python benchmarks/grouped_options.py runs/minilm-rt --task rt-sentiment --seeds 3
"""

from __future__ import annotations

import argparse
import collections
import statistics

import task_model

from pgbert.adapters import prunable_names
from pgbert.config import PruneConfig
from pgbert.methods import get_method
from pgbert.pipeline import calibrate
from pgbert.stages.allocation import OptionSpace, build_items, choose_options


def raw(choice) -> float:
    return sum(o.value for o in choice.parts)


def main() -> None:
    p = argparse.ArgumentParser()
    task_model.add_args(p)
    p.add_argument("--calib-samples", type=int, default=512)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.88])
    p.add_argument("--seeds", type=int, default=1)
    a = p.parse_args()
    data, tok, dense = task_model.load(a)
    names = prunable_names(dense)
    ratios = collections.defaultdict(list)
    for seed in range(a.seeds):
        cfg = PruneConfig(sparsity=a.sparsity[0], calib_samples=a.calib_samples, seed=seed, quiet=True)
        calib = calibrate(data, tok, dense, cfg, "shuffle")
        weights, heads = get_method("pgb").importance(dense, calib, cfg)
        space = OptionSpace(head_values=heads)
        items = build_items(weights, names, space, a.sparsity[0])
        for s in a.sparsity:
            kinds = collections.Counter(
                o.kind for o in choose_options(weights, names, space, s, items=items).values()
            )
            print(f"seed {seed} sparsity {s:.2f}: chosen options per matrix {dict(kinds)}")
        for _, choices in items:
            if len(choices[0].parts) != 2 or choices[0].parts[0].kind == "heads":
                continue
            for c in choices:
                if c.parts[0].kind != "grouped" or not c.parts[0].blocks_kept:
                    continue
                alts = [d for d in choices if d.parts[0].kind == "pair-submatrix" and d.cost <= c.cost]
                if alts:
                    key = f"G={c.parts[0].groups} k={c.parts[0].blocks_kept}"
                    ratios[key].append(raw(c) / max(max(raw(d) for d in alts), 1e-30))
    print(
        "grouped option's kept score / best pair sub-matrix with no more weights (FFN pairs, all layers, seeds):"
    )
    for key, rs in sorted(ratios.items()):
        print(f"  {key}: median {statistics.median(rs):.2f}, max {max(rs):.2f} over {len(rs)} pairs")


if __name__ == "__main__":
    main()

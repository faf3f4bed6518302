"""Is the knapsack's price of an attention head against FFN blocks off? Scale every head's importance by f
(f = 1: PGB as shipped) with the same Fisher scores and calibration draw, and score the one-shot model.
An experiment, not an option: pair its rows with benchmarks/ablation.py's `full` rows (same seeds).

    python benchmarks/head_price.py runs/minilm-rt --sparsity 0.88 --factors 0.5 2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import task_model

from pgbert.config import PruneConfig
from pgbert.methods import get_method
from pgbert.pipeline import calibrate, prune_model
from pgbert.training import evaluate


def main() -> None:
    p = argparse.ArgumentParser()
    task_model.add_args(p)
    p.add_argument("--sparsity", type=float, default=0.88)
    p.add_argument("--factors", type=float, nargs="+", default=[0.5, 2.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = p.parse_args()
    data, tok, dense = task_model.load(a)
    metric = data.spec.main_metric
    dense_metrics = evaluate(dense, tok, data)
    for seed in a.seeds:
        cfg = PruneConfig(sparsity=a.sparsity, quiet=True, seed=seed, finetune_epochs=0.0)
        calib = calibrate(data, tok, dense, cfg, "shuffle")
        t = time.perf_counter()
        weights, heads = get_method("pgb").importance(dense, calib, cfg)
        seconds = time.perf_counter() - t
        for f in a.factors:
            scores = ((weights, [h * f for h in heads]), seconds)
            _, _, rep = prune_model(dense, tok, data, cfg, calib, scores, dense_metrics)
            m = rep["metrics"]
            print(
                f"seed {seed} f={f:g} masked {m['masked'][metric]:.4f} oneshot {m['pruned'][metric]:.4f} "
                f"dropped {len(rep['dropped_sublayers'])} v_width {[s['v_width'] for s in rep['layers']]}",
                flush=True,
            )


if __name__ == "__main__":
    main()

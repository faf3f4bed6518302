"""Compensation time, today's code against an earlier commit's, on the same masks and calibration data.

The parent scores the model once, chooses PGB's masks at each sparsity (drop check off, so both sides see
identical masks) and saves them; then it times stage 5 (`compensate` on --compensation-samples fit examples
and 256 check examples, guards included) in child processes that import pgbert from this tree or from a
git worktree of the baseline commit, alternating A B A B ..., and reports medians, their ratio and the dev
accuracy of each side's compensated model (equal accuracy: the speed-up cost nothing).

    python benchmarks/compensation_time.py runs/minilm-rt --baseline 3ca65db --sparsity 0.5 0.88 --repeats 3
    python benchmarks/compensation_time.py runs/minilm-rt --baseline 7c7dde0 --sparsity 0.5 0.88 \
        --compensation-samples 2048 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(a) -> None:
    import time

    import torch

    from pgbert import models
    from pgbert.config import PruneConfig
    from pgbert.pipeline import calibrate
    from pgbert.stages.compensation import compensate, task_loss
    from pgbert.tasks import load_task
    from pgbert.training import apply_masks, evaluate

    data = load_task(a.task)
    tok = models.load_tokenizer(a.model)
    dense = models.load_for_task(a.model, data, require_finetuned=True).eval()
    n = a.compensation_samples
    cfg = PruneConfig(sparsity=0.5, seed=0, quiet=True, calib_samples=max(n, 2048), compensation_samples=n)
    calib = calibrate(data, tok, dense, cfg, "shuffle")
    out = {}
    for s, masks in torch.load(a.masks).items():
        pruned = models.load_for_task(a.model, data, require_finetuned=True).eval()
        apply_masks(pruned, masks)
        t = time.perf_counter()
        # the target `pgbert prune` fits at this commit (older commits' stage defaulted to `linear`)
        compensate(dense, pruned, masks, calib.fit, calib.check, task_loss, target=cfg.compensation_target)
        seconds = time.perf_counter() - t
        out[s] = {"seconds": seconds, "accuracy": evaluate(pruned, tok, data)["accuracy"]}
    print("RESULT " + json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default="runs/minilm-rt")
    p.add_argument("--task", default="rt-sentiment")
    p.add_argument("--baseline", default="3ca65db", help="commit to compare against")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.88])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compensation-samples", type=int, default=512, help="examples compensation fits on")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--masks", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)

    import torch

    from pgbert import models
    from pgbert.config import PruneConfig
    from pgbert.methods import get_method
    from pgbert.pipeline import calibrate
    from pgbert.tasks import load_task

    data = load_task(a.task)
    tok = models.load_tokenizer(a.model)
    dense = models.load_for_task(a.model, data, require_finetuned=True).eval()
    one = dict(seed=0, quiet=True, drop_check=False, importance_steps=1)  # masks to time on, no more
    cfg = PruneConfig(sparsity=a.sparsity[0], calib_samples=512, **one)
    calib = calibrate(data, tok, dense, cfg, "shuffle")
    method = get_method("pgb")
    scores = method.importance(dense, calib, cfg)
    masks = {}
    for s in a.sparsity:
        sel = method.select(
            dense, scores, calib, PruneConfig(sparsity=s, seed=0, quiet=True, drop_check=False)
        )
        masks[s] = sel.masks
    with tempfile.TemporaryDirectory() as tmp:
        mfile = Path(tmp) / "masks.pt"
        torch.save(masks, mfile)
        old = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), a.baseline], check=True
        )
        try:
            runs = {"baseline": [], "current": []}
            for _ in range(a.repeats):
                for side, path in (("baseline", old), ("current", ROOT)):
                    env = {**os.environ, "PYTHONPATH": str(path)}
                    cmd = [
                        sys.executable,
                        __file__,
                        a.model,
                        "--task",
                        a.task,
                        "--child",
                        "--masks",
                        str(mfile),
                        "--compensation-samples",
                        str(a.compensation_samples),
                    ]
                    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
                    runs[side].append({float(k): v for k, v in json.loads(line[7:]).items()})
                    print(side, runs[side][-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)
    for s in a.sparsity:
        med = {side: statistics.median(r[s]["seconds"] for r in rs) for side, rs in runs.items()}
        acc = {side: rs[0][s]["accuracy"] for side, rs in runs.items()}
        print(
            f"sparsity {s:.2f}: compensation {med['baseline']:.1f}s -> {med['current']:.1f}s "
            f"(median of {a.repeats}, {med['baseline'] / med['current']:.2f}x faster); dev accuracy "
            f"{acc['baseline']:.4f} -> {acc['current']:.4f}"
        )


if __name__ == "__main__":
    main()

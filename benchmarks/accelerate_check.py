"""1 vs 2 Accelerate CPU processes: same fine-tuning recipe, metrics must agree within noise.

Fine-tunes the bundled MiniLM on a subset of the bundled sentiment task twice, once as one process and
once as two gloo processes on the CPU, with the same global batch (2 x 16 vs 1 x 32)
and steps, and prints both dev accuracies and their difference against the binomial standard error.

    python benchmarks/accelerate_check.py [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(args: list[str], out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(args, check=True, env=env)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--train", type=int, default=4800)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    common = [
        "finetune",
        "minilm",
        "--task",
        "rt-sentiment",
        "--lr",
        "1e-4",
        "--max-steps",
        str(a.steps),
        "--max-train-samples",
        str(a.train),
        "--quiet",
    ]
    one = run(
        [sys.executable, "-m", "pgbert", *common, "--batch-size", "32", "--output", str(tmp / "one")],
        tmp / "one",
    )
    # accelerate 1.15's `--cpu` flag always starts a single process; two CPU processes need the torchrun
    # launcher (--multi_gpu) with ACCELERATE_USE_CPU=true, which Accelerator() reads (gloo backend).
    os.environ["ACCELERATE_USE_CPU"] = "true"
    launch = [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_cpu_threads_per_process",
        "1",
    ]
    two = run(
        [*launch, "-m", "pgbert", *common, "--batch-size", "16", "--output", str(tmp / "two")], tmp / "two"
    )
    a1, a2 = one["metrics"]["dev"]["accuracy"], two["metrics"]["dev"]["accuracy"]
    n = one["dev_examples"]["dev"]
    se = math.sqrt(2 * a1 * (1 - a1) / n)
    print(f"1 process : accuracy {a1:.4f}  ({one['seconds']:.0f}s, {one['num_processes']} process)")
    print(f"2 processes: accuracy {a2:.4f}  ({two['seconds']:.0f}s, {two['num_processes']} processes)")
    print(
        f"difference {a2 - a1:+.4f}; standard error of a difference {se:.4f}; within 2 SE: {abs(a2 - a1) <= 2 * se}"
    )


if __name__ == "__main__":
    main()

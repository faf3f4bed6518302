"""Does `--speedup X` deliver X? BERT-base geometry (random weights, magnitude importance), CPU.

For each batch size: profile the cost table (timed; a second lookup shows the cache), then for each target
choose PGB's masks under the latency budget as `pgbert prune --speedup` does (the table's choice, then
measured rounds that tighten the budget while the compact model falls short; --table-only skips them),
build the compact model and measure its speedup over the dense model (pgbert.bench.measure: interleaved
rounds, medians) at the profiled setting.

    python benchmarks/speedup_targets.py --threads 2 --batch 32 1 --speedup 1.5 2 3 5 \
        --json benchmarks/results/speedup-targets.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pgbert.bench import measure
from pgbert.methods.latency import LatencyBudget
from pgbert.profile import Setting, cost_table
from pgbert.stages.allocation import OptionSpace, choose_masks, predicted_ms

sys.path.insert(0, str(Path(__file__).parent))
from speed import BASE, base_geometry, prune_base  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--speedup", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--table-only", dest="measured", action="store_false", help="no measured calibration rounds"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dense, names, scores, head_values = base_geometry()
    space = OptionSpace(head_values=head_values)
    hd = BASE["hidden_size"] // BASE["num_attention_heads"]
    rows, profiles = [], []
    for b in a.batch:
        setting = Setting(a.device, a.threads, a.dtype, b, a.seq)
        t = time.perf_counter()
        table = cost_table(dense, setting, quiet=False)
        first = time.perf_counter() - t
        t = time.perf_counter()
        cost_table(dense, setting)
        again = time.perf_counter() - t
        profiles.append(
            {"batch": b, "profile_s": first, "cached_lookup_s": again, "was_cached": table.data["cached"]}
        )
        print(
            f"batch {b}: profile {first:.1f} s (cached before: {table.data['cached']}), again {again:.2f} s"
        )
        for x in a.speedup:
            budget = LatencyBudget(table, hd, table.dense_ms() / x, x)

            def timed(b):
                chosen, masks, _ = choose_masks(scores, names, space, None, None, b.knapsack())
                return masks, predicted_ms(chosen, names, b.table, hd), (chosen, masks)

            (chosen, masks), steps = budget.choose_measured(dense, timed, a.measured)
            _, compact, *_ = prune_base(dense, names, scores, head_values, masks=masks)
            res = measure(compact, dense, b, a.seq, a.threads, a.device, a.repeats, a.dtype)
            pred = table.dense_ms() / predicted_ms(chosen, names, table, hd)
            rounds = len(steps)
            row = {
                "device": a.device,
                "dtype": a.dtype,
                "batch": b,
                "seq": a.seq,
                "threads": a.threads,
                "target": x,
                "predicted_speedup": pred,
                "measured_speedup": res["speedup"],
                "spread": res["spread"],
                "measured_over_target": res["speedup"] / x,
                "dense_ms": res["against"]["median_ms"],
                "compact_ms": res["model"]["median_ms"],
                "kept_weights": int(sum(int(m.sum()) for m in masks.values())),
                "calibration": steps,
            }
            rows.append(row)
            print(
                f"  target {x:.1f}x: predicted {pred:.2f}x, measured {res['speedup']:.2f}x "
                f"({100 * (res['speedup'] / x - 1):+.0f}%; {rounds} measured rounds in the search)",
                flush=True,
            )
    if a.json:
        out = {"environment": res["environment"], "profiles": profiles, "rows": rows}
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

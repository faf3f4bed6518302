"""What each step of the faithful Kwon et al. port changed, one seed, one-shot, on a fine-tuned model.

Steps, each added to the one before (budget: PGB's kept weights for the weight search, PGB's FLOPs ratio at
the dev length for the MAC search; both from PGB's own selection at the same seed):
  old        the session-4 port (benchmarks/legacy_kwon.py): 512 shuffled calibration examples, weight
             budget with the tie bug, dense teacher, clamped direct solve in every layer
  +draw      their calibration: 2048 examples drawn with replacement
  +mac       their search: MACs at the dev set's average length, units by sorted index
  +tuning    their mask tuning (sqrt(c) teacher, LSMR from 1, stop rule, [CLS] only, offset, no layer-0
             heads): the port as shipped (pgbert.methods.kwon)
  dense-teacher  the port with the dense model as the tuning teacher instead of sqrt(c)
Each row gives accuracy with masks only and after the step's rescaling / tuning.

    python benchmarks/kwon_port.py runs/minilm-rt --sparsity 0.5 0.75 0.88 --json out.json
    python benchmarks/kwon_port.py runs/minilm-amazon --task classification --train-file train.tsv \
        --dev-file dev.tsv --sparsity 0.88 --variants +tuning dense-teacher --seed 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import legacy_kwon  # noqa: E402
import task_model  # noqa: E402

from pgbert.adapters import MATRICES, adapter_for, prunable_names  # noqa: E402
from pgbert.config import PruneConfig  # noqa: E402
from pgbert.methods import get_method, kwon  # noqa: E402
from pgbert.methods.structured import unit_masks_to_weight_masks  # noqa: E402
from pgbert.pipeline import calibrate  # noqa: E402
from pgbert.stages.importance import fisher_and_units  # noqa: E402
from pgbert.stages.structure import flops_ratio  # noqa: E402
from pgbert.training import apply_masks, evaluate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    task_model.add_args(p)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.88])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=["old", "+draw", "+mac", "+tuning", "dense-teacher"])
    p.add_argument(
        "--mac-budget",
        action="store_true",
        help="MACs <= 1 - sparsity, as `pgbert compare` budgets Kwon et al. (default: PGB's FLOPs ratio; "
        "only the MAC-search variants)",
    )
    p.add_argument("--json")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="print earlier --json outputs' seed means")
    a = p.parse_args()
    if a.summarize:
        return summarize(a.summarize)
    if a.mac_budget and {"old", "+draw"} & set(a.variants):
        p.error("--mac-budget has no weight budget for the old / +draw variants")
    data, tok, dense = task_model.load(a)
    metric = data.spec.main_metric
    ad = adapter_for(dense.config)
    heads, hidden = ad.num_heads(dense.config), ad.hidden_size(dense.config)
    names = prunable_names(dense)
    acc = lambda m: evaluate(m, tok, data)[metric]  # noqa: E731
    print(f"dense {metric} {acc(dense):.4f}", flush=True)

    base = PruneConfig(sparsity=a.sparsity[0], seed=a.seed, quiet=True)
    pgb = get_method("pgb")
    if not a.mac_budget:
        cal_pgb = calibrate(data, tok, dense, base, pgb.sampling)
        pgb_scores = pgb.importance(dense, cal_pgb, base)
    cal_new = calibrate(data, tok, dense, base, "with-replacement")
    if "old" in a.variants:
        cal_old = calibrate(data, tok, dense, replace(base, calib_samples=512), "shuffle")
        units_old = fisher_and_units(dense, cal_old.batches, names, heads)[1]
    units_new = fisher_and_units(dense, cal_new.batches, names, heads)[1]
    L = cal_new.dev_seq_len
    rows = []

    def fr_of(masks):
        layers = [dict(zip(MATRICES, (masks[n] for n in layer))) for layer in names]
        return flops_ratio(layers, heads, hidden, L)["flops_ratio"]

    def record(s, variant, keep, tune, *args):
        """Masks from `keep`, then tune(dense, pruned, keep, *args) rescales the pruned model in place."""
        if variant not in a.variants:
            return
        masks = unit_masks_to_weight_masks(dense, names, keep)
        pruned = copy.deepcopy(dense)
        apply_masks(pruned, masks)
        masked = acc(pruned)
        t = time.perf_counter()
        info = tune(dense, pruned, keep, *args) or {}
        row = {
            "sparsity": s,
            "variant": variant,
            "masked": masked,
            "tuned": acc(pruned),
            "flops_ratio": fr_of(masks),
            "params_kept": int(sum(float(m.sum()) for m in masks.values())),
            "tune_seconds": time.perf_counter() - t,
            "stopped_at": info.get("stopped_at"),
        }
        rows.append(row)
        print(
            f"s={s:.2f} {variant:14s} masked {masked:.4f}  tuned {row['tuned']:.4f}  flops {row['flops_ratio']:.3f}"
            f"  stopped at {row['stopped_at']}  {row['tune_seconds']:.0f}s",
            flush=True,
        )

    def old_keep(units, weights):
        return [
            {k: kwon.rearrange(kp[k], u[f"{k}.batches"]) for k in ("head", "neuron")}
            for kp, u in zip(legacy_kwon.search(units, dense, weights), units)
        ]

    for s in a.sparsity:
        if a.mac_budget:
            target = 1 - s
            print(f"s={s:.2f} MAC constraint {target:.3f} at L={L:.1f}", flush=True)
        else:
            sel = pgb.select(dense, pgb_scores, cal_pgb, replace(base, sparsity=s))
            weights, target = sum(float(m.sum()) for m in sel.masks.values()), fr_of(sel.masks)
            print(
                f"s={s:.2f} PGB keeps {weights:.0f} weights, FLOPs ratio {target:.3f} at L={L:.1f}",
                flush=True,
            )
        if "old" in a.variants:
            record(s, "old", old_keep(units_old, weights), legacy_kwon.rescale, cal_old.fit)
        if "+draw" in a.variants:
            record(s, "+draw", old_keep(units_new, weights), legacy_kwon.rescale, cal_new.batches)
        cfg = PruneConfig(flops_ratio=target, method="kwon", seed=a.seed, quiet=True)
        ksel = get_method("kwon").select(dense, units_new, cal_new, cfg)
        keep, teacher = ksel.info["keep"], ksel.info["teacher_keep"]
        record(s, "+mac", keep, legacy_kwon.rescale, cal_new.batches)
        record(s, "+tuning", keep, kwon.rescale, teacher, cal_new.batches, True)
        full = [{k: torch.ones_like(v) for k, v in t.items()} for t in teacher]
        record(s, "dense-teacher", keep, kwon.rescale, full, cal_new.batches, True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seed": a.seed, "dev_seq_len": L, "rows": rows}, f, indent=2)


def summarize(paths: list[str]) -> None:
    """Per budget and variant: masks-only and tuned metric by seed, their means, and tuned minus masks."""
    rows = []
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        rows += [dict(r, seed=d["seed"]) for r in d["rows"]]
    for s in sorted({r["sparsity"] for r in rows}):
        for v in dict.fromkeys(r["variant"] for r in rows if r["sparsity"] == s):
            rs = sorted((r for r in rows if (r["sparsity"], r["variant"]) == (s, v)), key=lambda r: r["seed"])
            by_seed = " / ".join(f"{r['masked']:.3f} -> {r['tuned']:.3f}" for r in rs)
            masked, tuned = (statistics.mean(r[k] for r in rs) for k in ("masked", "tuned"))
            stops = sum(r["stopped_at"] is not None for r in rs)
            print(
                f"s={s:.2f} {v:14s} seeds {' '.join(str(r['seed']) for r in rs)}: {by_seed}; mean {masked:.3f} -> "
                f"{tuned:.3f} ({100 * (tuned - masked):+.1f} points; tuning stopped early in {stops})"
            )


if __name__ == "__main__":
    main()

"""Ablations of PGB's design choices on a fine-tuned model (default: the bundled MiniLM run folder).

Variants at each sparsity, same Fisher scores and calibration data; one shot by default (the method
itself), and with --finetune-epochs E also re-finetuned as `pgbert prune` does (same seed, masks fixed):
  full            PGB as shipped (permutation, allocation with sub-matrix options, compensation, drops)
  no-permutation  identity grouping (contiguous blocks)
  uniform         every matrix keeps all G blocks of a G-grouping, G = round(1 / (1-s)): the same density
                  everywhere (no allocation, no sub-matrices, no drops)
  no-compensation masks only
  no-layer-drop   every matrix keeps at least one block
  no-drop-check   sublayers drop where the knapsack's second-order price says so, unmeasured
  drop-check-best the drop check ends on the lowest-loss allocation it measured, if 2 SE below its end
  drop-check-fit-512  the drop check compensates each allocation on 512 examples (PGB's default: 128)
  steps-T         importance estimated T times (T = 1, PGB's default: once, on the dense model)
  residual-target O and FFN-out compensate toward dense output + residual error (Kwon et al.'s target)
  damp-D          compensation's ridge weight D x the mean squared input (PGB's default: 0.01)
  fisher-per-example  Fisher sums squared per-example gradients (PGB's default: per batch of 32)
  head-tokens     the last layer's Q, O and FFN fit only the first token, the one the head reads
  all-tokens      every linear fits every token
  grouped-only    no sub-matrix options (only G-groupings with k >= 2 blocks, dense, empty)
  raw-fisher      summed single-weight saliency W^2 F (no unit calibration)
  dim-attention   attention pruned by Q/K and V/O pair blocks (dims inside heads) instead of whole heads
  ffn-eighths     FFN pairs keep neurons in steps of 1/8 (PGB's default: 1/16)
  full-width      FFN pairs keep full hidden width (neurons only, as structured pruning keeps them)
  ffn-48ths       FFN pairs keep neurons in steps of 1/48 (32 neurons on the MiniLM)
  full-width-48ths  both: neurons only, in steps of 1/48 (structured Fisher's units, PGB's knapsack)
  ffn-low         below the first 1/16 step FFN pairs may also keep 16, 32, ... neurons (a nearly dropped FFN)
  full-width-low  both: neurons only, with the low counts
  kd              re-finetune with distillation from the dense model (`--kd`; only with --finetune-epochs)
  lr-X            re-finetune at peak learning rate X (`--lr X`; 5e-5 by default; only with --finetune-epochs)
  no-keep-start   the re-finetune returns its best dev check even when the one-shot model scored higher
                  (PGB's default since session 29 keeps the one-shot model then; only with --finetune-epochs)
                  (kd, lr-X and no-keep-start re-finetune a copy of full's one-shot model: selection and
                  compensation once)
  compensate-512  compensation fits on the first 512 calibration examples (PGB's default: all of them)

    python benchmarks/ablation.py runs/minilm-rt --sparsity 0.5 0.88 [--seeds 0 1 2] [--json out.json]
    python benchmarks/ablation.py runs/minilm-rt --sparsity 0.88 --variants full no-drop-check kd \
        --seeds 0 1 2 --finetune-epochs 0.25

With --speedup X [Y ...] (and --threads N) the budgets are measured speeds at batch 32 x seq 128 instead of
sparsities (`pgbert prune --speedup`); "uniform" has no speed budget and is skipped there.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace

import task_model

from pgbert.comparison import mean_finetuned, refinetunes
from pgbert.config import REFINETUNE_LR, PruneConfig
from pgbert.methods import get_method
from pgbert.pipeline import calibrate, fit_batches, importance_batches, prune_model
from pgbert.training import evaluate

VARIANTS = {
    "full": {},
    "no-permutation": {"method": "pgb-identity"},
    "uniform": {},  # fixed_groups set per sparsity in run_seed
    "no-compensation": {"compensate": False},
    "no-layer-drop": {"allow_drop": False},
    "no-drop-check": {"drop_check": False},  # drops as the knapsack prices them (before issue 12)
    "drop-check-mean": {"drop_check_se": 0.0},  # a drop stands on any measured gain (before session 12)
    "drop-check-best": {"drop_check_best": True},  # end on the best measured allocation if 2 SE better
    "drop-check-fit-512": {"drop_check_samples": 512},  # the drop check compensates on 512 examples (128)
    "steps-1": {"importance_steps": 1},  # one importance estimate (the default)
    "steps-2": {"importance_steps": 2},  # a second estimate on the partly pruned model
    "steps-3": {"importance_steps": 3},
    "steps-4": {"importance_steps": 4},
    "residual-target": {"compensation_target": "residual"},  # the default since session 21 (= full)
    "linear-target": {"compensation_target": "linear"},  # the default before session 21
    "damp-0.001": {"compensation_damp": 1e-3},
    "damp-0.1": {"compensation_damp": 1e-1},
    "damp-1": {"compensation_damp": 1.0},
    "fisher-per-example": {"fisher_batch_size": 1},
    "head-tokens": {"compensation_tokens": "head"},
    "all-tokens": {"compensation_tokens": "all"},
    "grouped-only": {"submatrix": False},
    "raw-fisher": {"unit_fisher": False},
    "dim-attention": {"attention": "blocks"},
    "ffn-eighths": {"ffn_steps": 8},
    "full-width": {"free_widths": False},
    "ffn-48ths": {"ffn_steps": 48},
    "full-width-48ths": {"free_widths": False, "ffn_steps": 48},
    "ffn-low": {"ffn_low": True},
    "full-width-low": {"free_widths": False, "ffn_low": True},
    # structured Fisher's shape with PGB's scores: full-width neurons down to 16, drops as the knapsack prices them
    "full-width-low-no-drop-check": {"free_widths": False, "ffn_low": True, "drop_check": False},
    "kd": {"kd": True},
    "lr-2e-5": {"lr": 2e-5},  # re-finetune's peak learning rate (`--lr`; here 5e-5 unless a variant sets it)
    "lr-1e-4": {"lr": 1e-4},
    "lr-2e-4": {"lr": 2e-4},
    "no-keep-start": {"keep_start": False},  # the re-finetune returns its best check, even below one shot
    "compensate-512": {"compensation_samples": 512},
}
# variants that change only the re-finetune (nothing to measure without --finetune-epochs)
TRAINING_ONLY = {v for v, change in VARIANTS.items() if change and set(change) <= {"kd", "lr", "keep_start"}}


def main() -> None:
    p = argparse.ArgumentParser()
    task_model.add_args(p)
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.88])
    p.add_argument("--speedup", type=float, nargs="+", help="measured-speed budgets instead of sparsities")
    p.add_argument("--threads", type=int, default=0, help="with --speedup: CPU threads (0: all)")
    p.add_argument("--calib-samples", type=int, default=2048)
    p.add_argument(
        "--finetune-epochs", type=float, default=0.0, help="re-finetune each variant (0: one shot)"
    )
    p.add_argument(
        "--finetune-seeds",
        type=int,
        default=1,
        help="re-finetunes per pruned model (seeds K, K + 1000, ...; the row scores their mean)",
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="calibration subsets (seeds)")
    p.add_argument("--json")
    a = p.parse_args()
    data, tok, dense = task_model.load(a)
    metric = data.spec.main_metric
    dense_acc = evaluate(dense, tok, data)[metric]
    print(f"dense {metric} {dense_acc:.4f}")
    rows = [r for seed in a.seeds for r in run_seed(dense, tok, data, a, seed)]
    print("mean over seeds (masked / compensated / re-finetuned):")
    for b in budgets(a):
        for v in a.variants:
            rs = [r for r in rows if r["budget"] == label(b) and r["variant"] == v]
            if rs:
                masked, comp = (statistics.mean(r[k] for r in rs) for k in ("masked", "oneshot"))
                tuned = (
                    f"{statistics.mean(r['finetuned'] for r in rs):.4f}" if a.finetune_epochs else "not run"
                )
                print(f"{label(b)} {v:16s} {masked:.4f} / {comp:.4f} / {tuned}  ({len(rs)} seeds)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"dense": dense_acc, "rows": rows}, f, indent=2)


def budgets(a) -> list[dict]:
    return [{"speedup": x} for x in a.speedup] if a.speedup else [{"sparsity": s} for s in a.sparsity]


def label(budget: dict) -> str:
    return f"speedup {budget['speedup']:g}x" if "speedup" in budget else f"s={budget['sparsity']:.2f}"


def kept_speedup(lat: dict | None) -> float | None:
    """The measured speedup of the round prune kept (the one whose prediction the report holds)."""
    if not lat:
        return None
    rounds = lat["calibration"]
    return min(rounds, key=lambda r: abs(r["predicted"] - lat["predicted_speedup"]))["measured"]


def run_seed(dense, tok, data, a, seed: int) -> list[dict]:
    """Every variant at every budget through pipeline.prune_model, then re-finetuned as `pgbert prune`
    does when --finetune-epochs is set, sharing the calibration draw, between variants that score alike the
    importance, and between full and the training-only variants the one-shot model."""
    base = PruneConfig(
        **budgets(a)[0],
        threads=a.threads,
        calib_samples=a.calib_samples,
        quiet=True,
        seed=seed,
        finetune_epochs=a.finetune_epochs,
        lr=REFINETUNE_LR,  # as compare (pgbert prune: the model's own fine-tune's lr where recorded, at least this)
    )
    calib = calibrate(data, tok, dense, base, "shuffle")
    dense_metrics = evaluate(dense, tok, data)
    cache: dict = {}

    def one_shot(cfg: PruneConfig):
        cal = replace(
            calib,
            batches=importance_batches(data, calib.examples, tok, dense, cfg),  # fisher-per-example
            fit=fit_batches(data, calib.examples, tok, dense, cfg),  # compensate-512
        )
        key = (cfg.importance, cfg.unit_fisher, cfg.fisher_batch_size)
        if key not in cache:
            t = time.perf_counter()
            cache[key] = (get_method(cfg.method).importance(dense, cal, cfg), time.perf_counter() - t)
            print(f"seed {seed}: importance {key} on {len(calib.examples)} examples: {cache[key][1]:.0f}s")
        return prune_model(
            dense, tok, data, replace(cfg, finetune_epochs=0.0), cal, cache[key], dense_metrics
        )

    rows = []
    for b in budgets(a):
        full = None  # full's one-shot (model, masks, report), shared with the training-only variants
        for v in a.variants:
            if (v == "uniform" and "speedup" in b) or (v in TRAINING_ONLY and not a.finetune_epochs):
                continue
            cfg = replace(base, **b, **VARIANTS[v])
            if v == "uniform":
                cfg = replace(cfg, fixed_groups=round(1 / (1 - b["sparsity"])))
            t = time.perf_counter()
            if v in TRAINING_ONLY or v == "full":
                full = full or one_shot(replace(base, **b))
                pruned, masks, rep = copy.deepcopy(full)
            else:
                pruned, masks, rep = one_shot(cfg)
            m = rep["metrics"]
            tuned = refinetunes(pruned, masks, dense, tok, data, cfg, a.finetune_seeds, m["pruned"])
            row = {
                "seed": seed,
                "budget": label(b),
                "sparsity": b.get("sparsity"),
                "sparsity_achieved": rep["sparsity_achieved"],
                "measured_speedup": kept_speedup(rep.get("latency")),
                "variant": v,
                "masked": m["masked"][data.spec.main_metric],
                "oneshot": m["pruned"][data.spec.main_metric],
                "finetuned": mean_finetuned(tuned, data.spec.main_metric),
                "finetuned_runs": [t["finetuned"][data.spec.main_metric] for t in tuned],
                "flops_ratio": rep["flops_ratio"],
                "dropped": rep["dropped_sublayers"],
                "layout": rep["layout"],
                "drop_checks": rep.get("drop_checks", []),
                "prune_seconds": sum(rep["timings_s"].values()),  # stages 1-5
                "seconds": time.perf_counter() - t,  # training-only variants: their re-finetune alone
            }
            rows.append(row)
            ft = f"re-finetuned {row['finetuned']:.4f}  " if row["finetuned"] is not None else ""
            # A speedup is measured only under --speedup budgets; a sparsity run leaves it out.
            speed = f"speedup {row['measured_speedup']:.2f}x  " if row["measured_speedup"] else ""
            print(
                f"seed {seed} {label(b)} {v:16s} masked {row['masked']:.4f}  compensated {row['oneshot']:.4f}  "
                f"{ft}flops {row['flops_ratio']:.3f}  {speed}dropped {len(row['dropped'])}  {row['seconds']:.0f}s",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()

"""What a pruning run is asked to do: the method, its budget, calibration, ablation switches, re-finetune."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import PgbertError
from .stages.allocation import GROUP_COUNTS

MIN_CALIB = 32
# re-finetuning's peak learning rate where the model's own fine-tune's is not recorded, and its floor where it is
REFINETUNE_LR = 5e-5


@dataclass
class PruneConfig:
    sparsity: float | None = None  # pruned fraction of encoder linear weights (the CoFi convention)
    flops_ratio: float | None = None  # kept fraction of encoder MACs (methods with a MAC budget: kwon)
    # latency budget (pgb): measured time at the deployment setting below, from a profiled cost table
    speedup: float | None = None  # times faster than the dense model
    latency_ms: float | None = None  # a forward pass at the deployment setting takes at most this
    device: str = "cpu"
    threads: int = 0  # 0: all of torch's threads
    target_batch_size: int = 32
    target_seq_len: int = 128
    dtype: str = "float32"
    method: str = "pgb"
    importance: str = "fisher"  # "fisher" | "magnitude"
    calib_samples: int = 2048
    # examples per gradient in the Fisher sums (None: batch_size, as Kwon et al. sum squared batch gradients;
    # 1: the per-example empirical Fisher)
    fisher_batch_size: int | None = None
    # of the calibration examples, how many compensation fits on (None: all; 512 before session 14)
    compensation_samples: int | None = None
    check_samples: int = 256
    # PGB's ablation switches (all on: the method as shipped; no permutation is the method pgb-identity)
    group_counts: tuple[int, ...] = GROUP_COUNTS
    fixed_groups: int | None = None  # ablation: every matrix keeps k = (1-s) G^2 (<= G) of its G blocks
    compensate: bool = True
    # "residual" (since session 21): O and FFN-out fit their dense output plus the residual stream's error, i.e.
    # what enters the LayerNorm | "linear": each linear fits its own dense output
    compensation_target: str = "residual"
    # the ridge weight pulling each refit toward the dense weights, times the mean squared input
    compensation_damp: float = 1e-2
    # "head": the last layer's Q, O and FFN fit only the first token, the one a sequence-level head reads
    # (extractive QA always fits every token) | "all": every token
    compensation_tokens: str = "all"
    pairing: bool = True  # decide Q/K, V/O and FFN-in/out index sets jointly (False: matrix by matrix)
    unit_fisher: bool = True  # price whole units (dims, neurons) by their mask Fisher (False: summed W^2 F)
    attention: str = "heads"  # "heads": keep whole heads | "blocks": Q/K and V/O pair blocks (dims)
    allow_drop: bool = True  # False: every matrix keeps at least one block (no layer dropping)
    drop_check: bool = True  # a sublayer drops only if that measures better than keeping it (held-out loss)
    drop_check_samples: int = 128  # calibration examples the drop check compensates on
    # a drop stands only if it lowers the held-out loss by this many standard errors of the paired
    # per-example difference (0: by any amount, the rule before session 12)
    drop_check_se: float = 2.0
    # end on the lowest-loss allocation the drop check measured when it beats the chain's end by
    # drop_check_se standard errors (False: the chain's end, the rule before session 33)
    drop_check_best: bool = False
    # T > 1: re-score the partly pruned, compensated model T - 1 times on the way to the budget. 1 (one
    # estimate, on the dense model): on the MiniLM, 3 seeds, one shot, T = 2 never did better on the mean
    # (0.5 / 0.75 / 0.88: -0.3 / -0.6 / -0.2 points; at 5x speed -4.1) and took twice the time
    # (benchmarks/results/ablation-steps-weight*.txt, ablation-speed*.txt)
    importance_steps: int = 1
    submatrix: bool = True  # False: only G-groupings (the grouped-only ablation)
    ffn_steps: int = 16  # FFN pairs keep neurons in steps of 1/ffn_steps (8: the old eighths)
    free_widths: bool = True  # False: FFN pairs keep full hidden width (neurons only, as structured pruning)
    ffn_low: bool = False  # True: below the first 1/ffn_steps, FFN pairs may also keep 16, 32, ... neurons
    # re-finetuning
    finetune_epochs: float = 1.0
    kd: bool = False
    kd_alpha: float = 0.5
    # the one-shot model competes with the re-finetune's dev checks as step 0 (since session 29; False: the
    # best of the checks alone, which at 0.5 often scored below the one-shot model it started from)
    keep_start: bool = True
    # None: the learning rate the model was fine-tuned with where `pgbert finetune` recorded it (the model
    # folder's run_config.json), but not below REFINETUNE_LR; else REFINETUNE_LR. Since session 31 (at 0.88
    # the fine-tune's 1e-4 beat 5e-5 on both bundled-task fine-tunes measured, at 0.5 they tied); the floor
    # since session 34 (on two models fine-tuned at 2e-5, re-finetuning at 2e-5 lost 0.5 to 5e-5, 1-1-4):
    # benchmarks/RESULTS.md, "Re-finetuning's learning rate"
    lr: float | None = None
    batch_size: int = 32
    max_seq_length: int = 128
    seed: int = 0
    flops_seq_len: int = 128
    quiet: bool = False

    @property
    def refinetune_lr(self) -> float:
        """The re-finetune's peak learning rate: lr, or REFINETUNE_LR where lr is None and no fine-tune
        recorded one (api.prune fills lr from the model folder's run_config.json first)."""
        return REFINETUNE_LR if self.lr is None else self.lr

    @property
    def drop_check_batches(self) -> int:
        """How many of the compensation batches hold the drop check's drop_check_samples examples."""
        return max(1, -(-self.drop_check_samples // self.batch_size))

    def validate(self) -> None:
        from .methods import METHODS, get_method

        if self.method not in METHODS:
            raise PgbertError(f"unknown method '{self.method}'; choose from {', '.join(METHODS)}")
        if self.sparsity is None and self.flops_ratio is None and not self.latency_budget:
            raise PgbertError(
                "give a budget: --sparsity S (pruned weight fraction), --speedup X or --flops-ratio R"
            )
        if self.speedup is not None and not self.speedup > 1.0:
            raise PgbertError(f"--speedup must be above 1 (2 = twice as fast as dense), got {self.speedup}")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise PgbertError(f"--latency-ms must be positive, got {self.latency_ms}")
        if self.latency_budget:
            from .profile import check_setting

            check_setting(self.setting())
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise PgbertError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        if self.flops_ratio is not None and not 0.0 < self.flops_ratio < 1.0:
            raise PgbertError(f"--flops-ratio must be in (0, 1), got {self.flops_ratio}")
        if self.importance not in ("fisher", "magnitude"):
            raise PgbertError(f"--importance must be fisher or magnitude, got {self.importance}")
        if self.attention not in ("heads", "blocks"):
            raise PgbertError(f"--attention must be heads or blocks, got {self.attention}")
        if self.compensation_target not in ("linear", "residual"):
            raise PgbertError(
                f"--compensation-target must be linear or residual, got {self.compensation_target}"
            )
        if self.fisher_batch_size is not None and self.fisher_batch_size < 1:
            raise PgbertError(
                f"fisher_batch_size must be at least 1 (or None: batch_size), got {self.fisher_batch_size}"
            )
        if self.compensation_tokens not in ("all", "head"):
            raise PgbertError(f"--compensation-tokens must be all or head, got {self.compensation_tokens}")
        if not self.compensation_damp > 0:
            raise PgbertError(f"--compensation-damp must be above 0, got {self.compensation_damp}")
        if self.drop_check_se < 0:
            raise PgbertError(f"--drop-check-se must be 0 or more, got {self.drop_check_se}")
        if self.importance_steps < 1:
            raise PgbertError(f"--importance-steps must be at least 1, got {self.importance_steps}")
        if self.compensation_samples is not None and self.compensation_samples < 1:
            raise PgbertError(
                f"--compensation-samples must be at least 1, got {self.compensation_samples}; "
                "omit it to use all"
            )
        if self.calib_samples < MIN_CALIB:
            raise PgbertError(f"--calib-samples {self.calib_samples} is too few; use at least {MIN_CALIB}")
        get_method(self.method).check_budget(self)

    @property
    def latency_budget(self) -> bool:
        return self.speedup is not None or self.latency_ms is not None

    def setting(self):
        """The deployment setting a latency budget is measured at."""
        from .profile import Setting

        return Setting(self.device, self.threads, self.dtype, self.target_batch_size, self.target_seq_len)

    def to_dict(self) -> dict:
        return asdict(self)

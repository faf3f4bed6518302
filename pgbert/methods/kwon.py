"""Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers", step by step as their code
(WoosukKwon/retraining-free-pruning, main.py) runs it, on pgbert's adapters (masks act through the
weights they scale: a head's O columns, a neuron's FFN-out column):

1. Fisher of head and neuron masks: per-batch mask gradients on `num_samples` (2048) training examples
   drawn with replacement (np.random.choice after seeding), batch 32, task loss, eval mode.
2. Mask search under their MAC cost at the task's average dev sequence length L:
   per head 4 L d h + 2 L^2 h, per neuron 2 L d. For every head count n >= 1 (globally best heads), the
   rest of the budget buys the globally best neurons; keep the split of largest summed Fisher.
   Latency mode (--speedup / --latency-ms, their `search_latency`): lookup tables of one layer's attention
   time per kept head count and FFN time per kept neuron count (here read from pgbert's measured cost
   table, the same one PGB and structured Fisher use) are each fitted by a piecewise-linear function (a
   constant c up to a threshold count, then a slope); every layer keeps its threshold's best heads and
   neurons (so no sublayer is ever removed), and the time left after L (c_attention + c_ffn) is split as
   in the MAC search, priced by the two slopes. The constraint is the sublayers' time budget over their
   dense time; the teacher mask of step 4 comes from the same search at sqrt of it.
3. Mask rearrangement: per layer, with the kept counts fixed, greedily choose which units to prune so
   that the block-Fisher estimate ||sum over pruned units of their per-batch gradients||^2 is small.
4. Mask tuning: a teacher mask from the same search at the looser constraint sqrt(c) (their two-step
   schedule); layer by layer, the student's kept head / neuron scales are fitted by least squares so the
   sublayer's output plus residual matches the teacher's (LSMR, damping 1, solved for the change from 1;
   an offset column in the attention fit; layer 0's heads are not tuned; for sequence tasks the last
   layer's FFN fits the [CLS] token only). Tuning stops at the first layer whose solve fails or gives a
   scale outside [-10, 10]: later layers keep their masks at 1.

Deviations, stated: their MAC search slices the neuron ranking with a negative count when the heads alone
exceed the budget (taking nearly all neurons); here such head counts are skipped, as their latency
search does. Their FFN lookup table times every neuron count 1..F; here the table's measured grid is
interpolated (pgbert.profile), and their tables time LayerNorm and residual inside each sublayer, which
pgbert's puts in the fixed part (a constant per layer: it moves c, not the slopes). Like PGB and structured
Fisher under a latency budget, the search runs inside pgbert's measured rounds (the compact model is timed
and the constraint rescaled by the miss, methods.latency), so every method meets the same measured speed.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import lsmr
from torch import nn

from ..adapters import adapter_for, prunable_names
from ..errors import PgbertError
from ..stages.allocation import LatencyInfeasible
from ..stages.compensation import layer_inputs, run_layer, valid_tokens
from ..stages.importance import fisher_and_units
from ..training import apply_masks
from .base import Calibration, Method, Selection
from .latency import LatencyBudget, units_ms
from .structured import unit_masks_to_weight_masks

SCALE_LIMIT = 10.0
log = logging.getLogger("pgbert")


def mac_per_head(seq_len: float, hidden: int, head_size: int) -> float:
    """Q, K, V projections, the two attention products and the output projection of one head."""
    return 4 * seq_len * hidden * head_size + 2 * seq_len**2 * head_size


def mac_per_neuron(seq_len: float, hidden: int) -> float:
    return 2 * seq_len * hidden


def search_mac(
    head_fisher: torch.Tensor,
    neuron_fisher: torch.Tensor,
    constraint: float,
    seq_len: float,
    hidden: int,
    head_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2. head_fisher (layers, heads), neuron_fisher (layers, neurons) -> bool keep masks of the same
    shapes whose MACs are <= constraint x the dense model's. Units are taken by sorted index, so exactly
    the n best are kept whatever the ties."""
    if not 0 < constraint < 1:
        raise PgbertError(f"Kwon et al.'s MAC constraint must be in (0, 1), got {constraint}")
    ph, pn = mac_per_head(seq_len, hidden, head_size), mac_per_neuron(seq_len, hidden)
    max_mac = constraint * (head_fisher.numel() * ph + neuron_fisher.numel() * pn)
    h_val, h_idx = torch.sort(head_fisher.flatten().double(), descending=True, stable=True)
    n_val, n_idx = torch.sort(neuron_fisher.flatten().double(), descending=True, stable=True)
    h_cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(h_val, 0)])
    n_cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(n_val, 0)])
    best, best_hn = -math.inf, None
    for nh in range(1, head_fisher.numel() + 1):
        left = max_mac - nh * ph
        if left < 0:
            continue
        nn_ = min(int(left / pn), neuron_fisher.numel())
        total = float(h_cum[nh] + n_cum[nn_])
        if total > best:
            best, best_hn = total, (nh, nn_)
    if best_hn is None:
        raise PgbertError(f"MAC constraint {constraint:.3f} keeps not even one head; use a looser budget")
    heads = torch.zeros(head_fisher.numel(), dtype=torch.bool)
    heads[h_idx[: best_hn[0]]] = True
    neurons = torch.zeros(neuron_fisher.numel(), dtype=torch.bool)
    neurons[n_idx[: best_hn[1]]] = True
    return heads.view_as(head_fisher), neurons.view_as(neuron_fisher)


@dataclass(frozen=True)
class Piecewise:
    """Their latency model of one sublayer: time c for up to `threshold` units, then c + slope per unit."""

    threshold: int
    c: float
    slope: float


def fit_piecewise(lut: np.ndarray) -> Piecewise:
    """Least-squares fit of a lookup table (time of 1..n units) by a constant up to a threshold and a line
    through it after, the threshold chosen by the smallest squared error (their fit_latency_fn)."""
    lut = np.asarray(lut, dtype=np.float64)
    best, best_err = None, math.inf
    for t in range(1, len(lut) + 1):
        c = lut[:t].mean()
        y = lut[t:] - c
        x = np.arange(1, len(y) + 1)
        slope = max(0.0, float(x @ y / (x @ x))) if len(y) else 0.0
        err = float(np.square(lut[:t] - c).sum() + np.square(y - slope * x).sum())
        if err < best_err:
            best, best_err = Piecewise(t, float(c), slope), err
    return best


def kwon_luts(table) -> tuple[np.ndarray, np.ndarray]:
    """Their two lookup tables from pgbert's cost table: attention time for 1..H kept heads, FFN time for
    1..F kept neurons at full width."""
    g = table.geometry
    mha = np.array(table.attention_ms[1 : g.heads + 1], dtype=np.float64)
    ffn = np.array([table.ffn_ms(n, g.hidden, g.hidden) for n in range(1, g.ffn + 1)])
    return mha, ffn


def search_latency(
    head_fisher: torch.Tensor,
    neuron_fisher: torch.Tensor,
    constraint: float,
    mha_lut: np.ndarray,
    ffn_lut: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2, latency mode. Keep masks whose piecewise-linear time is <= constraint x the dense sublayers'
    time (the sum of both tables' full entries over layers). Every layer keeps its locally best `threshold`
    heads and neurons; the rest are ranked globally and split between heads and neurons as in search_mac."""
    if not 0 < constraint < 1:
        raise PgbertError(f"Kwon et al.'s latency constraint must be in (0, 1), got {constraint:.3f}")
    layers = head_fisher.shape[0]
    fh, fn = fit_piecewise(mha_lut), fit_piecewise(ffn_lut)
    dense = layers * (mha_lut[-1] + ffn_lut[-1])
    floor = layers * (fh.c + fn.c)  # at least `threshold` units in every layer
    left = constraint * dense - floor
    if left <= 0:
        raise LatencyInfeasible(floor, constraint * dense)
    heads = _base(head_fisher, fh.threshold)
    neurons = _base(neuron_fisher, fn.threshold)
    h_val, h_idx = torch.sort(
        head_fisher.double().masked_fill(heads, -math.inf).flatten(), descending=True, stable=True
    )
    n_val, n_idx = torch.sort(
        neuron_fisher.double().masked_fill(neurons, -math.inf).flatten(), descending=True, stable=True
    )
    n_heads, n_neurons = int((~heads).sum()), int((~neurons).sum())
    h_cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(h_val[:n_heads], 0)])
    n_cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(n_val[:n_neurons], 0)])
    best, best_hn = -math.inf, (0, n_neurons if fn.slope == 0 else min(int(left / fn.slope), n_neurons))
    for nh in range(1, n_heads + 1):
        rest = left - fh.slope * nh
        if rest < 0:
            continue
        nn_ = n_neurons if fn.slope == 0 else min(int(rest / fn.slope), n_neurons)
        total = float(h_cum[nh] + n_cum[nn_])
        if total > best:
            best, best_hn = total, (nh, nn_)
    heads.view(-1)[h_idx[: best_hn[0]]] = True
    neurons.view(-1)[n_idx[: best_hn[1]]] = True
    return heads, neurons


def _base(fisher: torch.Tensor, threshold: int) -> torch.Tensor:
    """Each layer's `threshold` best units (by Fisher), as a bool mask of fisher's shape."""
    keep = torch.zeros_like(fisher, dtype=torch.bool)
    idx = torch.sort(fisher.double(), dim=1, descending=True, stable=True)[1][:, :threshold]
    return keep.scatter_(1, idx, True)


def rearrange(keep: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Step 3 for one layer. keep: (units,) bool; grads: (batches, units) per-batch mask gradients."""
    n_pruned = int((~keep).sum())
    if n_pruned in (0, keep.numel()):
        return keep
    g = grads.double()
    order = torch.argsort(g.square().sum(0), stable=True).tolist()  # least important first
    pruned = order[:n_pruned]
    for idx in order[n_pruned:]:
        cand = pruned + [idx]
        G = g[:, cand]
        loss_without = (G.sum(1, keepdim=True) - G).square().sum(0)  # estimate if cand[j] stays kept
        del cand[int(loss_without.argmin())]
        pruned = cand
    out = torch.ones_like(keep)
    out[pruned] = False
    return out


def estimated_loss(keep: torch.Tensor, grads: torch.Tensor) -> float:
    """Block-Fisher estimate of the loss increase of pruning the units not in `keep`."""
    return float(grads.double()[:, ~keep].sum(1).square().sum())


def lsmr_from_one(ata: torch.Tensor, atb: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Solve ata x = atb for x near 1: LSMR with damping 1 on the change d = x - 1 (their solver).
    Returns x and whether LSMR converged (istop < 3)."""
    A, b = ata.double().numpy(), atb.double().numpy()
    rhs = b - A.sum(1)
    if rhs.shape[0] == 1:
        return torch.from_numpy(rhs / A[0, 0] + 1), True
    sol = lsmr(A, rhs, damp=1.0, maxiter=100000)
    return torch.from_numpy(sol[0] + 1), bool(sol[1] < 3)


def _chunks(n: int, size: int = 4096):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def attention_lstsq(ctx: torch.Tensor, x: torch.Tensor, target: torch.Tensor, W: torch.Tensor, b, kept, hd):
    """Normal equations of the attention fit: per kept head h its output ctx_h W_h^T, plus an offset
    column; target = teacher (O(ctx) + x), fitted as sum_h m_h ctx_h W_h^T + c = target - b - x."""
    k = len(kept)
    ata = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    atb = torch.zeros(k + 1, dtype=torch.float64)
    Wh = torch.stack([W[:, h * hd : (h + 1) * hd] for h in kept])  # k x d x hd
    for s in _chunks(ctx.shape[0]):
        c = ctx[s].view(ctx[s].shape[0], -1, hd)[:, kept]  # t x k x hd
        P = torch.einsum("tkj,kdj->tkd", c, Wh).double()  # t x k x d
        B = (target[s] - b - x[s]).double()
        flat = torch.cat([P.permute(1, 0, 2).reshape(k, -1), torch.ones(1, P.shape[0] * P.shape[2]).double()])
        ata += flat @ flat.T
        atb += flat @ B.reshape(-1)
    return ata, atb


def ffn_lstsq(a: torch.Tensor, h: torch.Tensor, target: torch.Tensor, W: torch.Tensor, b, kept):
    """Normal equations of the FFN fit: sum_i m_i a_i w_i = target - b - h over the kept neurons i
    (float32 products over token chunks, summed in float64)."""
    Wk = W[:, kept]
    ata = torch.zeros(len(kept), len(kept), dtype=torch.float64)
    atb = torch.zeros(len(kept), dtype=torch.float64)
    for s in _chunks(a.shape[0]):
        ak, B = a[s][:, kept], target[s] - b - h[s]
        ata += (ak.T @ ak).double()
        atb += ((B @ Wk) * ak).sum(0).double()
    return (Wk.T @ Wk).double() * ata, atb


@torch.no_grad()
def rescale(
    dense: nn.Module,
    pruned: nn.Module,
    keep: list[dict],
    teacher_keep: list[dict],
    batches: list[dict],
    cls_only: bool,
) -> dict:
    """Step 4 on `pruned` (dense weights x student masks), in place: kept heads' O columns and kept
    neurons' FFN-out columns are multiplied by their fitted scales. Returns which layers were tuned and
    where and why tuning stopped."""
    adapter = adapter_for(dense.config)
    names = prunable_names(dense)
    hd = adapter.head_size(dense.config)
    teacher = copy.deepcopy(dense)
    apply_masks(teacher, unit_masks_to_weight_masks(dense, names, teacher_keep))
    t_layers, s_layers = adapter.layers(teacher), adapter.layers(pruned)
    xt = xs = layer_inputs(dense, batches)
    report: dict = {"tuned": [], "stopped_at": None, "reason": None}
    for li in range(len(s_layers)):
        tp, sp = adapter.parts(t_layers[li]), adapter.parts(s_layers[li])
        # the teacher is never changed: one pass gives its next inputs and every input the fits need
        xt_next, t = run_layer(t_layers[li], xt, {"o": tp.o, "a": tp.ffn_out, "h": tp.ffn_in}, "input")
        kh = torch.nonzero(keep[li]["head"])[:, 0].tolist()
        if kh and li != 0:
            _, s = run_layer(s_layers[li], xs, {"o": sp.o}, "input", stop=True)
            xt_tok, xs_tok = valid_tokens(xt), valid_tokens(xs)
            target = t["o"] @ tp.o.weight.T + tp.o.bias + xt_tok
            ata, atb = attention_lstsq(s["o"], xs_tok, target, sp.o.weight, sp.o.bias, kh, hd)
            m, ok = lsmr_from_one(ata, atb)
            if stop := _bad(m[:-1], ok):
                report.update(stopped_at=f"layer{li}.attention", reason=stop)
                break
            for j, h in enumerate(kh):
                sp.o.weight[:, h * hd : (h + 1) * hd] *= float(m[j])
            report["tuned"].append(f"layer{li}.attention")
        kn = torch.nonzero(keep[li]["neuron"])[:, 0]
        if kn.numel():
            _, s = run_layer(s_layers[li], xs, {"a": sp.ffn_out, "h": sp.ffn_in}, "input", stop=True)
            tt, ss = dict(t), dict(s)
            if cls_only and li == len(s_layers) - 1:  # the [CLS] token of each sequence only
                first = _first_tokens(xs)
                tt = {k: v[first] for k, v in t.items()}
                ss = {k: v[first] for k, v in s.items()}
            target = tt["a"] @ tp.ffn_out.weight.T + tp.ffn_out.bias + tt["h"]
            ata, atb = ffn_lstsq(ss["a"], ss["h"], target, sp.ffn_out.weight, sp.ffn_out.bias, kn)
            m, ok = lsmr_from_one(ata, atb)
            if stop := _bad(m, ok):
                report.update(stopped_at=f"layer{li}.ffn", reason=stop)
                break
            sp.ffn_out.weight[:, kn] *= m.to(sp.ffn_out.weight.dtype)[None, :]
            report["tuned"].append(f"layer{li}.ffn")
        xt = xt_next
        xs, _ = run_layer(s_layers[li], xs, {}, "input")
    if report["stopped_at"]:
        log.info(
            "mask tuning stopped at %s: %s; later layers keep scale 1", report["stopped_at"], report["reason"]
        )
    return report


def _bad(m: torch.Tensor, ok: bool) -> str | None:
    if not ok:
        return "LSMR did not converge"
    if m.numel() and float(m.abs().max()) > SCALE_LIMIT:
        return f"a scale of {float(m.abs().max()):.1f} is outside [-{SCALE_LIMIT:g}, {SCALE_LIMIT:g}]"
    return None


def _first_tokens(inputs) -> torch.Tensor:
    """Positions of each sequence's first token ([CLS]) among the valid tokens run_layer concatenates."""
    counts = torch.cat([m.sum(1) for _, _, m in inputs])
    return torch.cumsum(counts, 0) - counts


class Kwon(Method):
    name = "kwon"
    sampling = "with-replacement"
    budget = "macs"
    latency = True

    def __init__(self, rearrange: bool = True, tune: bool = True):
        self.do_rearrange, self.tune = rearrange, tune

    def check_budget(self, cfg) -> None:
        # --flops-ratio R, or --sparsity S read as the MAC constraint 1 - S; or their latency mode
        if cfg.latency_budget and (cfg.sparsity is not None or cfg.flops_ratio is not None):
            raise PgbertError(
                "Kwon et al.'s search takes one budget: --speedup / --latency-ms, or --flops-ratio / --sparsity"
            )

    def importance(self, dense: nn.Module, calib: Calibration, cfg):
        heads = adapter_for(dense.config).num_heads(dense.config)
        return fisher_and_units(dense, calib.batches, prunable_names(dense), heads, cfg.quiet)[1]

    def select(self, dense: nn.Module, units, calib: Calibration, cfg) -> Selection:
        hf = torch.stack([u["head"] for u in units])
        nf = torch.stack([u["neuron"] for u in units])
        budget = LatencyBudget.of(dense, cfg)
        if budget is None:
            a = adapter_for(dense.config)
            c = cfg.flops_ratio if cfg.flops_ratio is not None else 1 - cfg.sparsity
            geometry = (calib.dev_seq_len, a.hidden_size(dense.config), a.head_size(dense.config))
            heads, neurons = search_mac(hf, nf, c, *geometry)
            t_heads, t_neurons = search_mac(hf, nf, math.sqrt(c), *geometry)
            report = {"mac_constraint": c, "mac_seq_len": calib.dev_seq_len}
        else:
            luts = kwon_luts(budget.table)

            def timed(b: LatencyBudget):
                c = b.sublayer_budget() / (b.table.dense_ms() - b.table.fixed_ms)
                try:
                    heads, neurons = search_latency(hf, nf, c, *luts)
                except LatencyInfeasible as e:
                    raise b.unreachable(e) from None
                keep = _per_layer(heads, neurons)
                masks = unit_masks_to_weight_masks(dense, prunable_names(dense), keep)
                return masks, units_ms(b.table, keep), (heads, neurons, c)

            (heads, neurons, c), steps = budget.choose_measured(dense, timed)
            t_heads, t_neurons = search_latency(hf, nf, math.sqrt(c), *luts)
            predicted = units_ms(budget.table, _per_layer(heads, neurons))
            report = {"latency_constraint": c, "latency": budget.report(predicted, steps)}
        keep = _per_layer(heads, neurons)
        if self.do_rearrange:
            keep = [
                {k: rearrange(kp[k], u[f"{k}.batches"]) for k in ("head", "neuron")}
                for kp, u in zip(keep, units)
            ]
        teacher = _per_layer(t_heads, t_neurons)
        masks = unit_masks_to_weight_masks(dense, prunable_names(dense), keep)
        return Selection(masks, {"keep": keep, "teacher_keep": teacher}, report)

    def update(self, dense, pruned, sel: Selection, units, calib: Calibration, cfg) -> dict:
        if not self.tune:
            return {}
        return rescale(
            dense, pruned, sel.info["keep"], sel.info["teacher_keep"], calib.batches, calib.task_kind != "qa"
        )


def _per_layer(heads: torch.Tensor, neurons: torch.Tensor) -> list[dict]:
    """(layers, heads) and (layers, neurons) keep masks -> one {"head", "neuron"} dict per layer."""
    return [{"head": h, "neuron": n} for h, n in zip(heads, neurons)]


def sample_with_replacement(n_pool: int, n: int, seed: int) -> np.ndarray:
    """Their draw: np.random.choice(len(train), num_samples) after np.random.seed(seed)."""
    return np.random.RandomState(seed).choice(n_pool, n)

"""Stage 5: weight compensation by ridge least squares, layer by layer in forward order.

For each pruned linear, inputs X come from the already-compensated pruned model and targets Y are the
dense model's outputs of that linear. For each kept block (rows R sharing the column set C):
    min ||Y[R] - W_R X[C] - b_R||^2 + lam ||[W_R, b_R] - [W_R, b_R]_orig||^2
Rows with no kept block get the mean target as bias (bias absorption). Padding tokens are excluded
(tokens="head": the last layer's Q, O and FFN fit only the first token, the one a sequence-level head reads).
The pruned layer runs only as far as O's input (attention mixes tokens); the rest of a post-LN layer is
token-wise and is computed on valid tokens from the stage before. Q, K and V share one Gram matrix.
Guards: a linear keeps its compensation only if it lowers the error on held-out calibration tokens; then
the prefix of compensated layers with the lowest held-out task loss is kept (all, some, or none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.activations import ACT2FN

from ..adapters import MATRICES, adapter_for


@dataclass
class LinearStats:
    """Sufficient statistics of (x, y) pairs: enough to solve and to score any (W, b) exactly."""

    n_in: int
    n_out: int
    gram: torch.Tensor = field(init=False)  # sum [x,1][x,1]^T  (n_in+1)^2
    xty: torch.Tensor = field(init=False)  # sum [x,1] y^T       (n_in+1) x n_out
    yy: torch.Tensor = field(init=False)  # sum y^2 per output
    ysum: torch.Tensor = field(init=False)
    count: int = 0

    def __post_init__(self):
        self.gram = torch.zeros(self.n_in + 1, self.n_in + 1, dtype=torch.float64)
        self.xty = torch.zeros(self.n_in + 1, self.n_out, dtype=torch.float64)
        self.yy = torch.zeros(self.n_out, dtype=torch.float64)
        self.ysum = torch.zeros(self.n_out, dtype=torch.float64)

    def add(
        self, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096, gram: torch.Tensor | None = None
    ) -> None:
        """Accumulate the pairs (x, y). gram: the Gram matrix of these very x (another linear's statistics
        on the same inputs, as Q, K and V share theirs), taken instead of recomputed."""
        # float32 products over chunks of tokens, summed in float64 (float64 matmuls are several times
        # slower on CPU; the ridge term keeps the solve insensitive to the rounding).
        if gram is not None:
            self.gram += gram
        for i in range(0, x.shape[0], chunk):
            xs, yc = x[i : i + chunk].float(), y[i : i + chunk].float()
            xc = torch.cat([xs, torch.ones(len(xs), 1)], 1)
            if gram is None:
                self.gram += (xc.T @ xc).double()
            self.xty += (xc.T @ yc).double()
            self.yy += yc.double().square().sum(0)
            self.ysum += yc.double().sum(0)
        self.count += x.shape[0]


def squared_error(W: torch.Tensor, b: torch.Tensor, st: LinearStats) -> float:
    """sum over tokens of ||y - W x - b||^2, from the statistics alone."""
    Wt = torch.cat([W.double(), b.double()[:, None]], 1)  # m x (n+1)
    return float(st.yy.sum() - 2 * (Wt * st.xty.T).sum() + ((Wt @ st.gram) * Wt).sum())


def solve_compensation(
    W: torch.Tensor,
    b: torch.Tensor,
    mask: torch.Tensor,
    st: LinearStats,
    damp: float = 1e-2,
    lam: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least-squares refit of the kept weights and the bias of one masked linear. The ridge weight
    lam defaults to damp x the mean squared input (over tokens, summed) of the statistics' columns."""
    W_new, b_new = (W * mask).double().clone(), b.double().clone()
    n = W.shape[1]
    if lam is None:
        lam = damp * float(torch.diagonal(st.gram)[:n].mean()) + 1e-8
    patterns, inverse = torch.unique(mask.bool(), dim=0, return_inverse=True)
    for p in range(patterns.shape[0]):
        rows = torch.nonzero(inverse == p)[:, 0]
        cols = torch.nonzero(patterns[p])[:, 0]
        if cols.numel() == 0:
            b_new[rows] = st.ysum[rows] / max(st.count, 1)
            continue
        idx = torch.cat([cols, torch.tensor([n])])
        A = st.gram[idx][:, idx] + lam * torch.eye(idx.numel(), dtype=torch.float64)
        orig = torch.cat([W[rows][:, cols].double(), b[rows].double()[:, None]], 1)  # |R| x (|C|+1)
        B = st.xty[idx][:, rows] + lam * orig.T
        sol = torch.linalg.solve(A, B)  # (|C|+1) x |R|
        W_new[rows[:, None], cols] = sol[:-1].T
        b_new[rows] = sol[-1]
    return W_new.to(W.dtype), b_new.to(b.dtype)


class _Stop(Exception):
    pass


def layer_inputs(model: nn.Module, batches: list[dict]) -> list[tuple[torch.Tensor, object, torch.Tensor]]:
    """(hidden states entering layer 0, the attention-mask argument, token mask) per batch."""
    layer0 = adapter_for(model.config).layers(model)[0]
    out = []

    def hook(module, args, kwargs):
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        out.append((args[0].detach(), mask))
        raise _Stop

    h = layer0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**{k: v for k, v in batch.items() if not k.endswith(("labels", "positions"))})
            except _Stop:
                pass
    finally:
        h.remove()
    return [(x, m, batch["attention_mask"].bool()) for (x, m), batch in zip(out, batches)]


def valid_tokens(inputs) -> torch.Tensor:
    """The hidden states of `layer_inputs`-shaped inputs on their valid (non-padding) tokens, stacked."""
    return torch.cat([x[m] for x, _, m in inputs])


def run_layer(layer, inputs, capture: dict[str, nn.Module], what: str, stop: bool = False):
    """Run one layer over all batches; return next hidden states and captured linear inputs or outputs
    (valid tokens only). stop=True (inputs only): each batch runs only until every captured module has
    received its input, and no next hidden states are returned (None)."""
    if stop and what != "input":
        raise ValueError("stop=True captures inputs only")
    got = {k: [] for k in capture}
    hooks = []
    tok: dict = {}
    for k, mod in capture.items():

        def hook(m, a, o=None, k=k):
            got[k].append((a[0] if what == "input" else o).detach()[tok["mask"]])
            tok["seen"].add(k)
            if stop and len(tok["seen"]) == len(capture):
                raise _Stop

        reg = mod.register_forward_pre_hook if what == "input" else mod.register_forward_hook
        hooks.append(reg(hook))
    nxt = []
    try:
        with torch.no_grad():
            for x, attn, tmask in inputs:
                tok.update(mask=tmask, seen=set())
                try:
                    y = layer(x, attn)
                except _Stop:
                    continue
                nxt.append((y[0] if isinstance(y, tuple) else y, attn, tmask))
    finally:
        for h in hooks:
            h.remove()
    return (None if stop else nxt), {k: torch.cat(v) for k, v in got.items()}


def compensate(
    dense: nn.Module,
    pruned: nn.Module,
    masks: dict[str, torch.Tensor],
    fit: list[dict],
    check: list[dict] | None,
    loss_fn,
    *,
    target: str,
    damp: float = 1e-2,
    quiet: bool = True,
    tokens: str = "all",
) -> dict[str, dict]:
    """Compensate `pruned` (dense weights times masks) in place; returns per-matrix errors (relative
    squared error on held-out tokens, before and after), whether each layer kept its compensation and the
    held-out task loss of every prefix of compensated layers. check=None skips the held-out guards (every
    linear keeps its refit: errors are then on the fit tokens).

    target "linear": each linear fits the dense linear's output. "residual": O and FFN-out, whose outputs
    are added to the residual stream before a LayerNorm, fit the dense output plus the residual's error
    (dense residual - pruned residual), so the sum entering the LayerNorm matches the dense one (the
    target Kwon et al.'s mask tuning fits).

    tokens "all": every linear fits every valid token. "head": in the last layer, Q, O, FFN-in and FFN-out fit
    only each sequence's first token, the one a sequence-level head (pooler, classifier) reads: the model's
    output depends on their other tokens not at all (K and V still fit every token, which the first attends
    to). For extractive QA, which reads every token, pass "all"."""
    if tokens not in ("all", "head"):
        raise ValueError(f"tokens must be all or head, got {tokens}")
    adapter = adapter_for(dense.config)
    d_layers, p_layers = adapter.layers(dense), adapter.layers(pruned)
    prefix = {id(m): n for n, m in pruned.named_modules()}
    guarded = check is not None
    # token sets: the fit batches, and the held-out check batches when guarded (errors are measured on
    # the last set: check, or fit itself without guards)
    d_in = [layer_inputs(dense, b) for b in ([fit, check] if guarded else [fit])]
    p_in = list(d_in)
    report: dict[str, dict] = {}
    act = ACT2FN[adapter.activation(dense.config)]
    originals, compensated, reports = [], [], []
    stages = (("q", "k", "v"), ("o",), ("ffn_in",), ("ffn_out",))
    for li in tqdm(range(len(d_layers)), desc="compensation", disable=quiet, leave=False):
        dparts, pparts = adapter.parts(d_layers[li]), adapter.parts(p_layers[li])
        dmods = {k: dparts.linear(k) for k in MATRICES}
        outs = [run_layer(d_layers[li], x, dmods, "output") for x in d_in]  # (next inputs, targets)
        saved = {
            k: (pparts.linear(k).weight.detach().clone(), pparts.linear(k).bias.detach().clone())
            for k in MATRICES
        }
        layer_report = {}
        if target == "residual":  # the dense residual streams that O's and FFN-out's outputs are added to
            res = [_residuals(x, t, dparts) for x, (_, t) in zip(d_in, outs)]
        # the pruned layer's linear inputs on valid tokens, per token set, each computed once its stage
        # starts (after the stage before it was compensated)
        flows = [{"q": valid_tokens(xs)} for xs in p_in]
        last = li == len(d_layers) - 1
        heads = [_first_tokens(xs) for xs in p_in] if tokens == "head" and last else None
        for stage in stages:
            k0 = stage[0]
            for f, xs in zip(flows, p_in):
                f[k0] = _stage_input(p_layers[li], pparts, act, k0, f, xs)
            xy = [({k: f[k0] for k in stage}, {k: t[k] for k in stage}) for f, (_, t) in zip(flows, outs)]
            if target == "residual" and k0 in RESIDUAL_OF:
                r = RESIDUAL_OF[k0]
                for (_, y), rd, f in zip(xy, res, flows):
                    y[k0] = y[k0] + rd[r] - f[r]
            grams: dict = {}  # (token set, kept columns) -> Gram matrix: Q, K and V read the same inputs
            for k in stage:
                lin = pparts.linear(k)
                name = prefix[id(lin)] + ".weight"
                mask = masks.get(name, torch.ones_like(lin.weight))
                # Only the input columns some kept weight reads enter the statistics: the same solve and
                # errors as over all columns (the others' weights are zero), for a fraction of the cost.
                cols = torch.nonzero(mask.any(0))[:, 0]
                cols = cols if cols.numel() else torch.zeros(1, dtype=torch.long)  # empty: bias only
                stats = []
                only_first = heads is not None and k in HEAD_READ
                rows = heads if only_first else [slice(None)] * len(xy)
                for i, (x, y) in enumerate(xy):
                    st = LinearStats(cols.numel(), lin.out_features)
                    key = (i, only_first, tuple(cols.tolist()))
                    st.add(x[k][rows[i]][:, cols], y[k][rows[i]], gram=grams.get(key))
                    grams[key] = st.gram
                    stats.append(st)
                st_fit, st_chk = stats[0], stats[-1]
                lam = damp * float(xy[0][0][k][rows[0]].square().sum(0).double().mean()) + 1e-8
                m, b = mask[:, cols], lin.bias.detach()
                W = lin.weight.detach()[:, cols] * m
                W2, b2 = solve_compensation(W, b, m, st_fit, lam=lam)
                norm = float(st_chk.yy.sum()) + 1e-12
                before, after = squared_error(W, b, st_chk) / norm, squared_error(W2, b2, st_chk) / norm
                if after < before:
                    with torch.no_grad():
                        lin.weight.mul_(mask)
                        lin.weight[:, cols] = W2 * m
                        lin.bias.copy_(b2)
                layer_report[name] = {
                    "error_before": before,
                    "error_after": min(after, before),
                    "compensated": after < before,
                }
        compensated.append(
            {
                k: (pparts.linear(k).weight.detach().clone(), pparts.linear(k).bias.detach().clone())
                for k in MATRICES
            }
        )
        originals.append(saved)
        reports.append(layer_report)
        d_in = [nxt for nxt, _ in outs]
        p_in = [_next_inputs(pparts, f, xs) for f, xs in zip(flows, p_in)]
    # Task guard: each layer's compensation was fitted on inputs from the compensated layers before it, so
    # the consistent choices are prefixes. Keep the prefix with the lowest held-out task loss.
    losses, keep = [], len(d_layers)
    if guarded:
        losses = [0.0] * (len(d_layers) + 1)
        losses[-1] = loss_fn(pruned, check)
        for li in reversed(range(len(d_layers))):
            _load(adapter.parts(p_layers[li]), originals[li])
            losses[li] = loss_fn(pruned, check)
        keep = min(range(len(losses)), key=lambda k: (losses[k], -k))
        for li in range(keep):
            _load(adapter.parts(p_layers[li]), compensated[li])
    for li, layer_report in enumerate(reports):
        for r in layer_report.values():
            r["layer_kept"] = li < keep
            if li >= keep:
                r.update(error_after=r["error_before"], compensated=False)
        report.update(layer_report)
    report["_check_loss"] = {"prefix_losses": losses, "compensated_layers": keep}
    return report


RESIDUAL_OF = {"o": "q", "ffn_out": "ffn_in"}  # O adds to the layer input (Q's input), FFN-out to FFN-in's
HEAD_READ = ("q", "o", "ffn_in", "ffn_out")  # the last layer's linears whose other tokens no head reads


def _first_tokens(inputs) -> torch.Tensor:
    """Which of `valid_tokens(inputs)` are their sequence's first token (position 0)."""
    out = []
    for _, _, m in inputs:
        first = torch.zeros_like(m)
        first[:, 0] = True
        out.append(first[m])
    return torch.cat(out)


@torch.no_grad()
def _residuals(inputs, targets: dict, parts) -> dict[str, torch.Tensor]:
    """The dense layer's residual streams on valid tokens: its input, and its FFN's input
    LN_attn(x + O(ctx)), from the dense O's output (a target already captured)."""
    x = valid_tokens(inputs)
    return {"q": x, "ffn_in": parts.attn_ln(x + targets["o"])}


@torch.no_grad()
def _stage_input(layer, parts, act, stage: str, flow: dict, inputs) -> torch.Tensor:
    """The input of a stage's linears in the pruned layer, on valid tokens. Only O's needs the layer run
    (attention mixes tokens); the rest of a post-LN layer is token-wise, computed from the inputs before:
    FFN-in reads LN_attn(x + O(ctx)), FFN-out reads act(FFN-in(h))."""
    if stage == "q":  # Q, K and V read the layer input itself
        return flow["q"]
    if stage == "o":
        return run_layer(layer, inputs, {"o": parts.o}, "input", stop=True)[1]["o"]
    if stage == "ffn_in":
        return parts.attn_ln(flow["q"] + parts.o(flow["o"]))
    return act(parts.ffn_in(flow["ffn_in"]))


@torch.no_grad()
def _next_inputs(parts, flow: dict, inputs) -> list:
    """The pruned layer's output, LN_ffn(h + FFN-out(a)), put back into the padded batches. Padding
    positions keep their input (no valid token attends to them)."""
    y = parts.ffn_ln(flow["ffn_in"] + parts.ffn_out(flow["ffn_out"]))
    out, i = [], 0
    for x, attn, m in inputs:
        n = int(m.sum())
        x = x.clone()
        x[m] = y[i : i + n].to(x.dtype)
        out.append((x, attn, m))
        i += n
    return out


@torch.no_grad()
def _load(parts, state: dict) -> None:
    for k, (w, b) in state.items():
        parts.linear(k).weight.copy_(w)
        parts.linear(k).bias.copy_(b)


@torch.no_grad()
def task_loss(model: nn.Module, batches: list[dict]) -> float:
    """Mean task loss over labelled batches (the compensation guard's held-out measure)."""
    model.eval()
    losses = [float(model(**b).loss) * len(b["input_ids"]) for b in batches]
    return sum(losses) / sum(len(b["input_ids"]) for b in batches)


@torch.no_grad()
def example_losses(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """Per-example task loss over labelled batches, as the model's own loss reduces it (its mean is
    task_loss): cross-entropy (classification), squared error (one output: regression), the mean of the
    start and end cross-entropies (extractive QA). The drop check pairs two models on these."""
    model.eval()
    targets = ("labels", "start_positions", "end_positions")
    out = []
    for b in batches:
        o = model(**{k: v for k, v in b.items() if k not in targets})
        if "start_positions" in b:
            n = o.start_logits.shape[1]  # positions outside the sequence are ignored, as HF's QA heads do
            s, e = (
                F.cross_entropy(logits.float(), b[k].clamp(0, n), ignore_index=n, reduction="none")
                for logits, k in ((o.start_logits, "start_positions"), (o.end_logits, "end_positions"))
            )
            out.append((s + e) / 2)
        elif o.logits.shape[-1] == 1:
            out.append((o.logits.squeeze(-1).float() - b["labels"].float()).square())
        else:
            out.append(F.cross_entropy(o.logits.float(), b["labels"], reduction="none"))
    return torch.cat(out).double()

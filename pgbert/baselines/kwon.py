"""Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (retraining-free), on the
same adapters (no head_mask: masks act through the weights they scale).

1. Fisher information of head and FFN-neuron masks (diagonal, from per-batch mask gradients).
2. Mask search under the budget: for every number of kept heads, spend the rest on neurons, keep the
   globally most important of each; take the split that keeps the most Fisher importance.
3. Mask rearrangement: per layer, with the kept counts fixed, choose which heads / neurons to prune so
   that the block (non-diagonal) Fisher estimate sum_b (sum over pruned units of dL_b/dm)^2 is small:
   greedy, starting from the diagonal choice, each further unit swapped in when that lowers it.
4. Mask rescaling: layer by layer, least squares on the kept mask values so the pruned sublayer plus its
   residual reproduces the dense one on calibration tokens; values clipped to [-10, 10], folded into the
   O / FFN-out columns.
The budget is the same count of encoder linear weights as PGB's, so the methods compare at equal size.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import adapter_for
from ..method.compensation import layer_inputs, run_layer
from .structured import unit_costs


def search(fisher: list[dict], model: nn.Module, budget: float) -> list[dict]:
    hc, nc = unit_costs(model)
    heads = torch.cat([f["head"] for f in fisher])
    neurons = torch.cat([f["neuron"] for f in fisher])
    h_sorted, n_sorted = (
        torch.sort(heads, descending=True).values,
        torch.sort(neurons, descending=True).values,
    )
    h_cum = torch.cat([torch.zeros(1), torch.cumsum(h_sorted.double(), 0).float()])
    n_cum = torch.cat([torch.zeros(1), torch.cumsum(n_sorted.double(), 0).float()])
    best, best_h = -1.0, 0
    for h in range(heads.numel() + 1):
        left = budget - h * hc
        if left < 0:
            break
        n = min(int(left // nc), neurons.numel())
        value = float(h_cum[h] + n_cum[n])
        if value > best:
            best, best_h = value, h
    n_keep = min(int((budget - best_h * hc) // nc), neurons.numel())
    h_thr = h_sorted[best_h - 1] if best_h else float("inf")
    n_thr = n_sorted[n_keep - 1] if n_keep else float("inf")
    keep, h_left, n_left = [], best_h, n_keep
    for f in fisher:  # ties broken in order, never beyond the counts
        kh = f["head"] >= h_thr
        kn = f["neuron"] >= n_thr
        kh &= torch.cumsum(kh.int(), 0) <= h_left
        kn &= torch.cumsum(kn.int(), 0) <= n_left
        h_left -= int(kh.sum())
        n_left -= int(kn.sum())
        keep.append({"head": kh, "neuron": kn})
    return keep


def rearrange(keep: list[dict], units: list[dict]) -> list[dict]:
    """Mask rearrangement (step 3) of every layer's head and neuron keep-vectors; counts are unchanged."""
    return [
        {k: _rearrange(kp[k], u[f"{k}.batches"]) for k in ("head", "neuron")} for kp, u in zip(keep, units)
    ]


def _rearrange(keep: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """keep: (units,) bool; grads: (batches, units) per-batch mask gradients."""
    n_pruned = int((~keep).sum())
    if n_pruned in (0, keep.numel()):
        return keep
    g = grads.double()
    order = torch.argsort(g.square().sum(0)).tolist()  # least important first
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


def _solve(ata: torch.Tensor, atb: torch.Tensor) -> torch.Tensor:
    reg = 1e-6 * float(torch.diagonal(ata).mean()) + 1e-12
    return torch.linalg.solve(ata + reg * torch.eye(ata.shape[0], dtype=ata.dtype), atb).clamp(-10, 10)


@torch.no_grad()
def rescale(dense: nn.Module, pruned: nn.Module, keep: list[dict], batches: list[dict]) -> None:
    """Least-squares mask rescaling, layer by layer, folded into O and FFN-out columns of `pruned`."""
    adapter = adapter_for(dense.config)
    d_layers, p_layers = adapter.layers(dense), adapter.layers(pruned)
    heads = adapter.num_heads(dense.config)
    xd = xp = layer_inputs(dense, batches)
    for li in range(len(d_layers)):
        dp, pp = adapter.parts(d_layers[li]), adapter.parts(p_layers[li])
        # attention: target = dense (x + attn(x)) - pruned x, over valid tokens
        _, dinp = run_layer(d_layers[li], xd, {"ln": dp.attn_ln}, "input")
        _, pinp = run_layer(p_layers[li], xp, {"o": pp.o, "ln": pp.attn_ln}, "input")
        kh = torch.nonzero(keep[li]["head"])[:, 0]
        if kh.numel():
            ctx, W, b = pinp["o"].double(), pp.o.weight.double(), pp.o.bias.double()
            x_res = pinp["ln"].double() - (ctx @ W.T + b)  # the residual input of the pruned layer
            target = dinp["ln"].double() - x_res - b
            hd = W.shape[1] // heads
            P = torch.stack(
                [ctx[:, h * hd : (h + 1) * hd] @ W[:, h * hd : (h + 1) * hd].T for h in kh.tolist()], 1
            )
            m = _solve(torch.einsum("thd,tgd->hg", P, P), torch.einsum("thd,td->h", P, target))
            for j, h in enumerate(kh.tolist()):
                pp.o.weight[:, h * hd : (h + 1) * hd] *= float(m[j])
        # FFN: target = dense (h + ffn(h)) - pruned h
        _, dffn = run_layer(d_layers[li], xd, {"ln": dp.ffn_ln}, "input")
        _, pffn = run_layer(p_layers[li], xp, {"f2": pp.ffn_out, "ln": pp.ffn_ln}, "input")
        kn = torch.nonzero(keep[li]["neuron"])[:, 0]
        if kn.numel():
            a, W, b = pffn["f2"].double(), pp.ffn_out.weight.double(), pp.ffn_out.bias.double()
            h_res = pffn["ln"].double() - (a @ W.T + b)
            target = dffn["ln"].double() - h_res - b
            ak, Wk = a[:, kn], W[:, kn]
            ata = (Wk.T @ Wk) * (ak.T @ ak)
            atb = (ak * (target @ Wk)).sum(0)
            m = _solve(ata, atb)
            pp.ffn_out.weight[:, kn] *= m.to(pp.ffn_out.weight.dtype)[None, :]
        xd, _ = run_layer(d_layers[li], xd, {}, "input")
        xp, _ = run_layer(p_layers[li], xp, {}, "input")

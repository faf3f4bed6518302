"""The Kwon et al. port as pgbert shipped it before issue 11 (session 4), kept only so that
benchmarks/kwon_port.py can measure what each step of the faithful port (pgbert.methods.kwon) changed:
  search:  a weight budget (PGB's kept weights), threshold + per-layer caps (drops tied units wrongly);
  rescale: the dense model as teacher, a direct solve clamped to [-10, 10], every layer, all tokens,
           no offset column.
Not part of the package.
"""

from __future__ import annotations

import torch
from torch import nn

from pgbert.adapters import adapter_for
from pgbert.methods.structured import unit_costs
from pgbert.stages.compensation import layer_inputs, run_layer


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

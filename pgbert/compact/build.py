"""Pruned (masked) model -> compact model: kept blocks stored contiguously, permutations folded into
neighbouring layers, rows with no block turned into constants folded forward, dropped sublayers removed.

Folding, per layer (all exact):
  attention: V rows with no block output their bias, which attention passes through unchanged (softmax
  weights sum to 1), so they fold into O's bias; K rows with no block shift every score of a query by a
  constant, so they are removed with their Q rows; heads with no live V dim are removed.
  FFN: neurons with no FFN-in block output act(b1), folded into FFN-out's bias; neurons FFN-out does
  not read are not computed; FFN-in's output order is whatever FFN-out reads, so no scatter between.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..adapters import MATRICES, adapter_for
from .modeling_pgbert import CompactLayer

DENSE_COLS = 0.9  # single block: zero weight columns rather than an input gather when >= 90% are read
DENSE_ROWS = 0.95  # O / FFN-out: compute zero rows rather than map outputs only when >= 95% of rows are kept


def build_linear(
    W: torch.Tensor,
    b: torch.Tensor,
    M: torch.Tensor,
    target: torch.Tensor | None,
    rows: torch.Tensor | None = None,
    in_map: torch.Tensor | None = None,
    dense_rows: float = 0.0,
    in_width: int | None = None,
):
    """Plan and tensors of one CompactLinear.

    target: output order as original row indices (-1 = zero padding); None = free order over `rows`.
    in_map: original input column -> position in the actual input (default identity), whose width is
    in_width (default: W's input width).
    dense_rows: for a single block, compute all target rows directly (no output map) when at least this
    fraction of them has kept weights (0: always, as for Q/K/V; above 1: never).
    Returns ((plan, tensors), output row order).
    """
    n_out_rows, n_in = W.shape
    n_in = in_width if in_width is not None else n_in
    Mb = M.bool()
    cand = rows if rows is not None else target[target >= 0]
    live = cand[Mb[cand].any(1)] if cand.numel() else cand
    groups: list[tuple[torch.Tensor, torch.Tensor]] = []
    if live.numel():
        patterns, inv = torch.unique(Mb[live], dim=0, return_inverse=True)
        groups = [(live[inv == p], torch.nonzero(patterns[p])[:, 0]) for p in range(patterns.shape[0])]
    same = len({(r.numel(), c.numel()) for r, c in groups}) == 1
    if len(groups) > 1 and same:
        order = torch.cat([r for r, _ in groups])
        cols = torch.cat([c for _, c in groups])
        weight = torch.stack([W[r][:, c] * M[r][:, c] for r, c in groups])
    elif groups:
        order = torch.cat([r for r, _ in groups])
        cols = torch.unique(torch.cat([c for _, c in groups]))
        weight = (W[order][:, cols] * M[order][:, cols])[None]
    else:  # nothing computed: one zero weight, every output is a constant
        order = cand[:0]
        cols = torch.zeros(1, dtype=torch.long)
        weight = torch.zeros(1, 1, 1)
    if target is not None and weight.shape[0] == 1 and order.numel() >= dense_rows * int((target >= 0).sum()):
        # Cheaper than an output map: compute every target row (zero weights where a row has no block,
        # its bias as the constant; padding rows are zero).
        tgt = target.clamp(min=0)
        weight = (W[tgt][:, cols] * M[tgt][:, cols] * (target >= 0)[:, None])[None]
        bias = torch.where(target >= 0, b[tgt], torch.zeros(()))
        return _pack(weight, bias, cols, in_map, n_in, target.numel()), target
    bias = b[order] if order.numel() else torch.zeros(1)
    if target is None:
        target = order
    pos = torch.full((n_out_rows + 1,), -1, dtype=torch.long)
    pos[order] = torch.arange(order.numel())
    y_len = max(order.numel(), 1)
    src = torch.where(target >= 0, pos[target.clamp(min=0)], -1)
    src = torch.where(src >= 0, src, torch.full_like(src, y_len))  # the zero slot after the last output
    base = torch.where((target >= 0) & (src == y_len), b[target.clamp(min=0)], torch.zeros(()))
    identity = target.numel() == order.numel() > 0 and bool((src == torch.arange(target.numel())).all())
    out_map = None if identity else (src, base)
    return _pack(weight, bias, cols, in_map, n_in, target.numel(), out_map), order


def _pack(weight, bias, cols, in_map, n_in: int, n_out: int, out_map=None) -> tuple[dict, dict]:
    """The plan (shapes and flags, stored in the config) and tensors (stored in the weights) of one linear."""
    in_index = in_map[cols] if in_map is not None else cols
    assert bool((in_index >= 0).all()), "a kept column reads an input that is not computed"
    if weight.shape[0] == 1 and in_index.numel() >= DENSE_COLS * n_in:  # cheaper than gathering
        full = weight.new_zeros(1, weight.shape[1], n_in)
        full[0][:, in_index] = weight[0]
        weight, in_index = full, torch.arange(n_in)
    gather_in = not (in_index.numel() == n_in and bool((in_index == torch.arange(n_in)).all()))
    plan = {
        "blocks": weight.shape[0],
        "rows": weight.shape[1],
        "cols": weight.shape[2],
        "n_out": int(n_out),
        "gather_in": gather_in,
        "map_out": out_map is not None,
    }
    tensors = {"weight": weight.contiguous(), "bias": bias.contiguous()}
    if gather_in:
        tensors["in_index"] = in_index
    if out_map is not None:
        tensors["out_src"], tensors["out_base"] = out_map
    return plan, tensors


def _head_layout(
    keep: torch.Tensor, heads: int, live_heads: torch.Tensor, min_width: int = 1
) -> tuple[torch.Tensor, int]:
    """Per live head, its kept dims (original indices), padded with -1 to a common width."""
    hd = keep.numel() // heads
    per = [torch.nonzero(keep[h * hd : (h + 1) * hd])[:, 0] + h * hd for h in live_heads.tolist()]
    width = max([min_width] + [p.numel() for p in per])
    layout = torch.full((len(per), width), -1, dtype=torch.long)
    for i, p in enumerate(per):
        layout[i, : p.numel()] = p
    return layout.flatten(), width


def compact_attention(t: dict, heads: int):
    """Plan + tensors for the attention sublayer, or (None, constant output) if it is dropped."""
    Wo, bo, Mo = t["o"]
    Wv, bv, Mv = t["v"]
    Mo = Mo.clone()
    if not Mo.bool().any():
        return None, {"attn_const": bo.clone()}
    v_kept, o_used = Mv.bool().any(1), Mo.bool().any(0)
    const = o_used & ~v_kept
    bo = bo + (Wo * Mo)[:, const] @ bv[const]
    Mo[:, const] = 0
    live = v_kept & Mo.bool().any(0)
    hd = live.numel() // heads
    live_heads = torch.nonzero(live.view(heads, hd).any(1))[:, 0]
    if live_heads.numel() == 0:
        return None, {"attn_const": bo}
    v_layout, v_width = _head_layout(live, heads, live_heads)
    qk_layout, qk_width = _head_layout(t["k"][2].bool().any(1), heads, live_heads)
    plan = {"heads": int(live_heads.numel()), "qk_width": qk_width, "v_width": v_width, "scale": hd**-0.5}
    tensors = {}
    for name, layout in (("q", qk_layout), ("k", qk_layout), ("v", v_layout)):
        W, b, M = t[name]
        (plan[name], tens), _ = build_linear(W, b, M, layout)
        tensors.update({f"attention.{name}.{k}": v for k, v in tens.items()})
    in_map = torch.full((Wo.shape[1],), -1, dtype=torch.long)
    in_map[v_layout[v_layout >= 0]] = torch.nonzero(v_layout >= 0)[:, 0]
    Mo[:, ~live] = 0
    (plan["o"], tens), _ = build_linear(
        Wo, bo, Mo, torch.arange(Wo.shape[0]), in_map=in_map, dense_rows=DENSE_ROWS, in_width=v_layout.numel()
    )
    tensors.update({f"attention.o.{k}": v for k, v in tens.items()})
    return plan, tensors


def compact_ffn(t: dict, act: str):
    W1, b1, M1 = t["ffn_in"]
    W2, b2, M2 = t["ffn_out"]
    M2 = M2.clone()
    a = ACT2FN[act]
    if not M1.bool().any():
        return None, {"ffn_const": b2 + (W2 * M2) @ a(b1)}
    if not M2.bool().any():
        return None, {"ffn_const": b2.clone()}
    in_kept, out_used = M1.bool().any(1), M2.bool().any(0)
    const = out_used & ~in_kept
    b2 = b2 + (W2 * M2)[:, const] @ a(b1[const])
    M2[:, const] = 0
    live = torch.nonzero(in_kept & M2.bool().any(0))[:, 0]
    if live.numel() == 0:
        return None, {"ffn_const": b2}
    (plan_in, t_in), order = build_linear(W1, b1, M1, None, rows=live)
    in_map = torch.full((W2.shape[1],), -1, dtype=torch.long)
    in_map[order] = torch.arange(order.numel())
    M2[:, in_map < 0] = 0
    (plan_out, t_out), _ = build_linear(
        W2, b2, M2, torch.arange(W2.shape[0]), in_map=in_map, dense_rows=DENSE_ROWS, in_width=order.numel()
    )
    tensors = {f"ffn.fc_in.{k}": v for k, v in t_in.items()}
    tensors.update({f"ffn.fc_out.{k}": v for k, v in t_out.items()})
    return {"ffn_in": plan_in, "ffn_out": plan_out, "act": act}, tensors


@torch.no_grad()
def compact_layer(parts, masks: dict[str, torch.Tensor], heads: int, act: str) -> tuple[dict, CompactLayer]:
    # built on the CPU whatever device the pruned model is on (the caller moves the compact model)
    t = {
        k: tuple(x.detach().float().cpu() for x in (parts.linear(k).weight, parts.linear(k).bias, masks[k]))
        for k in MATRICES
    }
    attn_plan, attn_t = compact_attention(t, heads)
    ffn_plan, ffn_t = compact_ffn(t, act)
    plan = {
        "hidden": parts.attn_ln.normalized_shape[0],
        "ln_eps": parts.attn_ln.eps,
        "attention": attn_plan,
        "ffn": ffn_plan,
    }
    layer = CompactLayer(plan)
    state = {**attn_t, **ffn_t}
    for ln in ("attn_ln", "ffn_ln"):
        src: nn.LayerNorm = getattr(parts, ln)
        state[f"{ln}.weight"], state[f"{ln}.bias"] = src.weight.detach(), src.bias.detach()
    missing, unexpected = layer.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if not m.endswith("_const")], (missing, unexpected)
    return plan, layer


def layer_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    adapter = adapter_for(model.config)
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for layer in adapter.layers(model):
        parts = adapter.parts(layer)
        out.append(
            {
                k: masks.get(names[id(parts.linear(k).weight)], torch.ones_like(parts.linear(k).weight))
                for k in MATRICES
            }
        )
    return out

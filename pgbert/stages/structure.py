"""What a set of masks means for the encoder's structure: dropped sublayers, kept widths, FLOPs."""

from __future__ import annotations

import torch


def layer_structure(masks: dict[str, torch.Tensor], num_heads: int) -> dict:
    """For one layer's masks (keys q, k, v, o, ffn_in, ffn_out), the structure the compact model keeps.

    Attention is dropped when V or O keeps nothing (its output is then a constant); the FFN when
    FFN-in or FFN-out keeps nothing. K rows with no kept weight are removed with their Q rows (softmax
    ignores a per-query constant); V rows with no kept weight fold into O's bias. An FFN keeps the neurons
    live in both FFN-in (a row) and FFN-out (a column), reads the hidden features FFN-in keeps columns of
    and writes those FFN-out keeps rows of (block-diagonal layouts: the union over blocks).
    """
    nz = {k: m != 0 for k, m in masks.items()}
    attn_dropped = not nz["v"].any() or not nz["o"].any()
    ffn_dropped = not nz["ffn_in"].any() or not nz["ffn_out"].any()
    qk_width = 0 if attn_dropped else int(nz["k"].any(1).sum())
    v_width = 0 if attn_dropped else int((nz["v"].any(1) & nz["o"].any(0)).sum())
    neurons = nz["ffn_in"].any(1) & nz["ffn_out"].any(0)
    return {
        "attention_dropped": attn_dropped,
        "ffn_dropped": ffn_dropped,
        "qk_width": qk_width,
        "v_width": v_width,
        "ffn_neurons": 0 if ffn_dropped else int(neurons.sum()),
        "ffn_in_width": 0 if ffn_dropped else int(nz["ffn_in"][neurons].any(0).sum()),
        "ffn_out_width": 0 if ffn_dropped else int(nz["ffn_out"][:, neurons].any(1).sum()),
    }


def layout(struct: dict, head_size: int) -> str:
    """One layer's layer_structure in a few characters: "h<heads> f<neurons>x<input width>x<output width>"."""
    heads = struct["v_width"] // head_size
    return f"h{heads} f{struct['ffn_neurons']}x{struct['ffn_in_width']}x{struct['ffn_out_width']}"


def linear_macs(masks: dict[str, torch.Tensor], struct: dict) -> int:
    """Multiply-accumulates per token of the layer's linears as the compact model runs them."""
    total = 0
    for k, m in masks.items():
        if k in ("q", "k", "v", "o") and struct["attention_dropped"]:
            continue
        if k in ("ffn_in", "ffn_out") and struct["ffn_dropped"]:
            continue
        total += int((m != 0).sum())
    return total


def flops_ratio(
    layers: list[dict[str, torch.Tensor]], num_heads: int, hidden: int, seq_len: int = 128
) -> dict:
    """Kept over dense encoder MACs for one sequence of `seq_len` tokens (linears + attention core)."""
    dense = pruned = 0
    for masks in layers:
        st = layer_structure(masks, num_heads)
        dense += seq_len * sum(m.numel() for m in masks.values()) + seq_len**2 * 2 * hidden
        pruned += seq_len * linear_macs(masks, st) + seq_len**2 * (st["qk_width"] + st["v_width"])
    return {"flops_ratio": pruned / dense, "seq_len": seq_len, "dense_macs": dense, "kept_macs": pruned}

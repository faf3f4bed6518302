"""Compact PGB-pruned BERT-family models. Standalone: imports only torch and transformers, so it is copied
into every saved model folder and loads with `AutoModelFor...from_pretrained(dir, trust_remote_code=True)`.

The task model of the original family (embeddings, pooler, head) is rebuilt from `base_config`; each
encoder layer is replaced by a CompactLayer whose linears hold only their kept blocks:

    CompactLinear:  y = pad(blocks(x[..., in_index]))[..., out_src] + out_base
      blocks: (B, r, c) weights, one matmul (B = 1) or one batched matmul (B > 1);
      in_index gathers the input columns the blocks use; out_src/out_base place block outputs (and
      constants for rows with no block) in the order the consumer needs. Either may be absent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.activations import ACT2FN


class CompactLinear(nn.Module):
    def __init__(self, blocks: int, rows: int, cols: int, n_out: int, gather_in: bool, map_out: bool):
        super().__init__()
        self.shape = (blocks, rows, cols)
        self.weight = nn.Parameter(torch.zeros(blocks, rows, cols))
        self.bias = nn.Parameter(torch.zeros(blocks * rows))
        self.gather_in, self.map_out = gather_in, map_out
        if gather_in:
            self.register_buffer("in_index", torch.zeros(blocks * cols, dtype=torch.long))
        if map_out:
            self.register_buffer("out_src", torch.zeros(n_out, dtype=torch.long))
            self.register_buffer("out_base", torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # 2-D: index_select on the last dim of a 3-D tensor is ~6x slower
        if self.gather_in:
            x = x.index_select(1, self.in_index)
        B, r, c = self.shape
        if B == 1:
            y = torch.addmm(self.bias, x, self.weight[0].t())
        else:
            xs = x.view(-1, B, c).transpose(0, 1)
            y = torch.baddbmm(self.bias.view(B, 1, r), xs, self.weight.transpose(1, 2))
            y = y.transpose(0, 1).reshape(-1, B * r)
        if self.map_out:
            y = F.pad(y, (0, 1)).index_select(1, self.out_src) + self.out_base
        return y.view(*lead, y.shape[-1])


def _linear(plan: dict) -> CompactLinear:
    return CompactLinear(
        plan["blocks"], plan["rows"], plan["cols"], plan["n_out"], plan["gather_in"], plan["map_out"]
    )


class CompactAttention(nn.Module):
    def __init__(self, plan: dict):
        super().__init__()
        self.heads, self.qk_width, self.v_width, self.scale = (
            plan["heads"],
            plan["qk_width"],
            plan["v_width"],
            plan["scale"],
        )
        self.q, self.k, self.v, self.o = (_linear(plan[n]) for n in ("q", "k", "v", "o"))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.qk_width).transpose(1, 2)
        k = self.k(x).view(b, t, self.heads, self.qk_width).transpose(1, 2)
        v = self.v(x).view(b, t, self.heads, self.v_width).transpose(1, 2)
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            attention_mask = attention_mask.to(q.dtype)
        # CPU's fused (flash) kernel needs equal head widths: zero-pad the narrower side (exact: zero
        # dims add nothing to the scores, zero value dims are sliced off).
        w = max(self.qk_width, self.v_width)
        if self.qk_width < w:
            q, k = F.pad(q, (0, w - self.qk_width)), F.pad(k, (0, w - self.qk_width))
        if self.v_width < w:
            v = F.pad(v, (0, w - self.v_width))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.scale)
        ctx = ctx[..., : self.v_width]
        return self.o(ctx.transpose(1, 2).reshape(b, t, self.heads * self.v_width))


class CompactFFN(nn.Module):
    def __init__(self, plan: dict):
        super().__init__()
        self.fc_in, self.fc_out = _linear(plan["ffn_in"]), _linear(plan["ffn_out"])
        self.act = ACT2FN[plan["act"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class CompactLayer(nn.Module):
    """Post-LN encoder layer; a dropped sublayer adds its constant output instead of running."""

    def __init__(self, plan: dict):
        super().__init__()
        d, eps = plan["hidden"], plan["ln_eps"]
        self.attention = CompactAttention(plan["attention"]) if plan["attention"] else None
        self.ffn = CompactFFN(plan["ffn"]) if plan["ffn"] else None
        if self.attention is None:
            self.attn_const = nn.Parameter(torch.zeros(d))
        if self.ffn is None:
            self.ffn_const = nn.Parameter(torch.zeros(d))
        self.attn_ln = nn.LayerNorm(d, eps=eps)
        self.ffn_ln = nn.LayerNorm(d, eps=eps)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs
    ):
        x = hidden_states
        a = self.attention(x, attention_mask) if self.attention is not None else self.attn_const
        h = self.attn_ln(x + a)
        f = self.ffn(h) if self.ffn is not None else self.ffn_const
        return self.ffn_ln(h + f)


_LAYERS = {"distilbert": ("distilbert", "transformer.layer")}


def _layer_list(inner: nn.Module, model_type: str) -> nn.ModuleList:
    base_attr, path = _LAYERS.get(model_type, (model_type, "encoder.layer"))
    obj = getattr(inner, base_attr)
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


class PgbertConfig(PretrainedConfig):
    model_type = "pgbert"

    def __init__(self, base_config: dict | None = None, layer_plans: list | None = None, **kwargs):
        self.base_config = base_config or {}
        self.layer_plans = layer_plans or []
        self.base_model_type = self.base_config.get("model_type")
        super().__init__(**kwargs)


class _PgbertModel(PreTrainedModel):
    config_class = PgbertConfig
    base_model_prefix = "inner"
    _auto_class_for_task = None  # set by subclasses

    def __init__(self, config: PgbertConfig):
        super().__init__(config)
        base = dict(config.base_config)
        base_cfg = AutoConfig.for_model(base.pop("model_type"), **base)
        self.inner = self._auto_class_for_task.from_config(base_cfg)
        layers = _layer_list(self.inner, config.base_model_type)
        for i, plan in enumerate(config.layer_plans):
            layers[i] = CompactLayer(plan)
        self.post_init()

    def _init_weights(self, module):  # weights always come from the checkpoint
        pass

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


class PgbertForSequenceClassification(_PgbertModel):
    _auto_class_for_task = AutoModelForSequenceClassification


class PgbertForQuestionAnswering(_PgbertModel):
    _auto_class_for_task = AutoModelForQuestionAnswering


# save_pretrained from any load path writes this file and the auto_map beside the weights.
PgbertConfig.register_for_auto_class()
PgbertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
PgbertForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")

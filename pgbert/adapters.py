"""Model-family adapters: where Q, K, V, O, FFN-in/out and the LayerNorms of each encoder layer live.

Every supported family is a post-LayerNorm encoder:
    h = LN_attn(x + O(attention(Q x, K x, V x)));  y = LN_ffn(h + FFN_out(act(FFN_in h)))
Adapters know nothing of tasks or pruning; they only name modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import PgbertError

MATRICES = ("q", "k", "v", "o", "ffn_in", "ffn_out")


@dataclass
class LayerParts:
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    attn_ln: nn.LayerNorm
    ffn_ln: nn.LayerNorm

    def linear(self, name: str) -> nn.Linear:
        return getattr(self, name)


@dataclass(frozen=True)
class Adapter:
    family: str
    base_attr: str  # attribute of the task model that holds the base encoder model
    layers_attr: str  # attribute path from the base model to the ModuleList of layers
    paths: dict[str, str]  # LayerParts field -> attribute path inside one layer
    heads_attr: str  # config field: attention heads per layer
    hidden_attr: str  # config field: hidden size
    ffn_attr: str  # config field: FFN width
    act_attr: str
    layernorm: str = "post"  # where the LayerNorms sit: "post" (x + sublayer(x), then LN)

    def base(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.base_attr)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(self.base(model), self.layers_attr)

    def parts(self, layer: nn.Module) -> LayerParts:
        return LayerParts(**{k: _get(layer, p) for k, p in self.paths.items()})

    def num_heads(self, config) -> int:
        return int(getattr(config, self.heads_attr))

    def hidden_size(self, config) -> int:
        return int(getattr(config, self.hidden_attr))

    def ffn_size(self, config) -> int:
        return int(getattr(config, self.ffn_attr))

    def head_size(self, config) -> int:
        return self.hidden_size(config) // self.num_heads(config)

    def activation(self, config) -> str:
        return str(getattr(config, self.act_attr))


def _get(obj, path: str):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


_BERT_PATHS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "attn_ln": "attention.output.LayerNorm",
    "ffn_ln": "output.LayerNorm",
}
_DISTILBERT_PATHS = {
    "q": "attention.q_lin",
    "k": "attention.k_lin",
    "v": "attention.v_lin",
    "o": "attention.out_lin",
    "ffn_in": "ffn.lin1",
    "ffn_out": "ffn.lin2",
    "attn_ln": "sa_layer_norm",
    "ffn_ln": "output_layer_norm",
}

_BERT_FIELDS = ("num_attention_heads", "hidden_size", "intermediate_size", "hidden_act")

ADAPTERS: dict[str, Adapter] = {
    "bert": Adapter("bert", "bert", "encoder.layer", _BERT_PATHS, *_BERT_FIELDS),
    "roberta": Adapter("roberta", "roberta", "encoder.layer", _BERT_PATHS, *_BERT_FIELDS),
    "electra": Adapter("electra", "electra", "encoder.layer", _BERT_PATHS, *_BERT_FIELDS),
    "distilbert": Adapter(
        "distilbert",
        "distilbert",
        "transformer.layer",
        _DISTILBERT_PATHS,
        "n_heads",
        "dim",
        "hidden_dim",
        "activation",
    ),
}


def adapter_for(config) -> Adapter:
    """The adapter for a transformers config; unknown families are refused with the supported list."""
    model_type = getattr(config, "model_type", None)
    if model_type == "pgbert":
        model_type = config.base_model_type
    if model_type not in ADAPTERS:
        supported = ", ".join(sorted(ADAPTERS))
        raise PgbertError(
            f"model type '{model_type}' is not a supported BERT-family encoder; supported: {supported} "
            "(MiniLM checkpoints are 'bert')"
        )
    return ADAPTERS[model_type]


def encoder_parts(model: nn.Module) -> list[LayerParts]:
    adapter = adapter_for(model.config)
    return [adapter.parts(layer) for layer in adapter.layers(model)]


def prunable_names(model: nn.Module) -> list[list[str]]:
    """Per layer, the parameter names of the Q, K, V, O, FFN-in and FFN-out weights (MATRICES order)."""
    adapter = adapter_for(model.config)
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        [names[id(adapter.parts(layer).linear(k).weight)] for k in MATRICES]
        for layer in adapter.layers(model)
    ]

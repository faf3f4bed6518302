"""ONNX export of compact (or dense) task models, checked against onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PgbertError


class _Wrapper(nn.Module):
    """Plain-tensor signature for the exporter: (input_ids, attention_mask[, token_type_ids]) -> logits."""

    def __init__(self, model: nn.Module, qa: bool):
        super().__init__()
        self.model, self.qa = model, qa

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        out = self.model(**kw)
        return (out.start_logits, out.end_logits) if self.qa else out.logits


def _uses_token_types(model: nn.Module) -> bool:
    cfg = getattr(model.config, "base_config", None) or model.config.to_dict()
    return cfg.get("model_type") != "distilbert" and cfg.get("type_vocab_size", 0) > 1


def export_onnx(model: nn.Module, path: str | Path, seq_len: int = 32, opset: int = 18) -> dict:
    """Export to ONNX with dynamic batch and sequence axes; returns the onnxruntime check."""
    import onnxruntime as ort

    path = Path(path)
    if path.exists() and path.is_dir():
        raise PgbertError(f"{path} is a folder; give a file name such as model.onnx")
    qa = "QuestionAnswering" in type(model).__name__
    wrapper = _Wrapper(model.eval(), qa).eval()
    vocab = int(
        (getattr(model.config, "base_config", None) or model.config.to_dict()).get("vocab_size", 1000)
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, seq_len), generator=g)
    mask = torch.ones(2, seq_len, dtype=torch.long)
    mask[1, seq_len // 2 :] = 0
    args = [ids, mask]
    names = ["input_ids", "attention_mask"]
    if _uses_token_types(model):
        args.append(torch.zeros_like(ids))
        names.append("token_type_ids")
    outs = ["start_logits", "end_logits"] if qa else ["logits"]
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {n: {0: batch, 1: seq} for n in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with torch.no_grad():
        # The dynamo exporter: the TorchScript one mis-traces transformers v5's attention-mask creation.
        torch.onnx.export(
            wrapper,
            tuple(args),
            str(tmp),
            input_names=names,
            output_names=outs,
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
            external_data=False,
        )
        ref = wrapper(*args)
    ref = [ref] if not qa else list(ref)
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    diff = max(float(np.abs(r.numpy() - o).max()) for r, o in zip(ref, got))
    if diff > 1e-3:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"onnxruntime output differs from torch by {diff:.2e}")
    tmp.replace(path)
    return {"onnx": str(path), "max_abs_diff_vs_torch": diff, "inputs": names, "outputs": outs}

"""ONNX export of compact (or dense) task models, checked against onnxruntime."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

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


def export_onnx(
    model: nn.Module, path: str | Path, seq_len: int = 32, opset: int = 18, int8: bool = False
) -> dict:
    """Export to ONNX with dynamic batch and sequence axes; returns the onnxruntime check.

    int8: write the model with ONNX Runtime's dynamic int8 quantization of every linear (weights int8 per
    output channel, activations quantized at run time); the check then reports the difference, not a bound.
    """

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
    tmp = fp32 = path.with_suffix(path.suffix + ".tmp")
    try:
        with torch.no_grad(), _exporter_quiet():
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
        _fold_weight_ops(tmp)
        diff = _max_diff(tmp, ref, dict(zip(names, args)))
        if diff > 1e-3:
            raise RuntimeError(f"onnxruntime output differs from torch by {diff:.2e}")
        result = {"onnx": str(path), "max_abs_diff_vs_torch": diff, "inputs": names, "outputs": outs}
        if int8:
            tmp = path.with_suffix(path.suffix + ".int8.tmp")
            quantize_int8(fp32, tmp)
            result.update(int8=True, max_abs_diff_vs_torch=_max_diff(tmp, ref, dict(zip(names, args))))
        tmp.replace(path)
    finally:
        fp32.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return result


def _fold_weight_ops(onnx_file: Path) -> None:
    """Fold the ops the exporter leaves on weights (slicing a block, transposing for the matmul) into
    initializers, whatever their size (onnxscript's default folds only small tensors). ONNX Runtime's int8
    quantizer then finds every linear's weight as an initializer in MatMul/Gemm layout."""
    import onnx
    from onnxscript import optimizer

    model = optimizer.optimize(onnx.load(str(onnx_file)), input_size_limit=1 << 40, output_size_limit=1 << 40)
    onnx.save(model, str(onnx_file))


@contextlib.contextmanager
def _exporter_quiet():
    """The exporter's own warnings (torchvision ops not registered, axis renaming, deprecations) say nothing
    about the user's model: hide them; a failed export still raises."""
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        onnx_log.setLevel(level)


def _max_diff(onnx_file: Path, ref: list[torch.Tensor], inputs: dict[str, torch.Tensor]) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in inputs.items()})
    return max(float(np.abs(r.numpy() - o).max()) for r, o in zip(ref, got))


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """ONNX Runtime dynamic quantization of the MatMul/Gemm weights (int8, per output channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process (shape inference) is moot here
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"],
    )


class OnnxModel(nn.Module):
    """An ONNX Runtime session behind the interface pgbert's evaluation uses (config, forward -> logits)."""

    def __init__(self, onnx_file: str | Path, config, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.config = config

    def forward(self, **batch):
        feed = {k: batch[k].cpu().numpy().astype(np.int64) for k in self.inputs}
        got = self.session.run(None, feed)
        return SimpleNamespace(**{k: torch.from_numpy(v) for k, v in zip(self.outputs, got)})

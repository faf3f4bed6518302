"""Pruning and int8 together in ONNX Runtime: dense / compact, fp32 / int8 (dynamic quantization).

Every model is exported with `pgbert export` code (compact.export), quantized with pgbert's int8 path, and
timed in ONNX Runtime with the same inputs, interleaved round by round (medians), at each batch size.
  - the real MiniLM: a dense fine-tuned folder and its compact pruned folder, with dev accuracy on the task;
  - BERT-base geometry (random weights, magnitude importance) at the given sparsities.

    python benchmarks/int8.py --minilm runs/minilm-rt runs/pgb-0.5 --base-sparsity 0.5 0.88 \
        --threads 2 --batch 32 1 --seq 128 --json benchmarks/results/int8.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pgbert import api
from pgbert.compact.export import OnnxModel, export_onnx, quantize_int8

sys.path.insert(0, str(Path(__file__).parent))
from speed import base_geometry_models  # noqa: E402


def sessions(models: dict, folder: Path, threads: int) -> dict:
    """name -> (fp32 session, int8 session, fp32 path, int8 path) for every torch model."""
    out = {}
    for name, model in models.items():
        fp32, int8 = folder / f"{name}.onnx", folder / f"{name}-int8.onnx"
        export_onnx(model, fp32)
        quantize_int8(fp32, int8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        for kind, path in (("fp32", fp32), ("int8", int8)):
            out[f"{name} {kind}"] = (
                ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]),
                path,
            )
    return out


def timed(sess: dict, batch: int, seq: int, rounds: int, vocab: int = 1000) -> dict[str, float]:
    g = np.random.default_rng(0)
    ids = g.integers(5, vocab, (batch, seq)).astype(np.int64)
    times: dict[str, list[float]] = {k: [] for k in sess}
    for r in range(rounds + 1):  # round 0 warms up
        for name, (s, _) in sess.items():
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in [i.name for i in s.get_inputs()]:
                feed["token_type_ids"] = np.zeros_like(ids)
            t = time.perf_counter()
            s.run(None, feed)
            if r:
                times[name].append(1000 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def table(setting: str, ms: dict[str, float], extra: dict | None = None) -> list[dict]:
    base = ms["dense fp32"]
    rows = []
    for name, t in ms.items():
        row = {"setting": setting, "model": name, "ms": t, "speedup_vs_dense_fp32": base / t}
        row.update((extra or {}).get(name, {}))
        rows.append(row)
        acc = f"  accuracy {row['accuracy']:.4f}" if "accuracy" in row else ""
        print(f"{setting:34s} {name:14s} {t:8.1f} ms  {base / t:5.2f}x{acc}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minilm", nargs=2, metavar=("DENSE", "COMPACT"), help="fine-tuned and pruned folders")
    p.add_argument("--task", default="rt-sentiment")
    p.add_argument("--base-sparsity", type=float, nargs="*", default=[0.5, 0.88])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.minilm:
            from pgbert.tasks import load_task

            dense_dir, compact_dir = a.minilm
            models = {"dense": api._load_any(dense_dir), "compact": api._load_any(compact_dir)}
            sess = sessions(models, Path(tmp), a.threads)
            data = load_task(a.task)
            tok = api.models.load_tokenizer(dense_dir)
            acc = {}
            for name, (_, path) in sess.items():
                m = api.evaluate_all(OnnxModel(path, models[name.split()[0]].config, a.threads), tok, data)
                acc[name] = {"accuracy": m[data.main_dev][data.spec.main_metric]}
            for b in a.batch:
                ms = timed(sess, b, a.seq, a.rounds)
                rows += table(f"MiniLM {Path(compact_dir).name} b{b} s{a.seq}", ms, acc)
        for s in a.base_sparsity:
            dense, compact = base_geometry_models(s)
            sess = sessions({"dense": dense, "compact": compact}, Path(tmp) / f"b{s}", a.threads)
            for b in a.batch:
                ms = timed(sess, b, a.seq, a.rounds)
                rows += table(f"BERT-base geometry s={s} b{b} s{a.seq}", ms)
    if a.json:
        Path(a.json).write_text(json.dumps({"threads": a.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Latency, FLOPs, parameters and environment of a model, measured the same way for dense and compact."""

from __future__ import annotations

import logging
import platform
import resource
import statistics
import time

import numpy as np
import torch
from torch import nn

from .compact.modeling_pgbert import CompactLayer, CompactLinear


def encoder_macs(model: nn.Module, seq_len: int) -> int:
    """Encoder MACs for one sequence: linears (tokens x weights) + attention core (2 L^2 x head width)."""
    compact = [m for m in model.modules() if isinstance(m, CompactLayer)]
    if compact:
        total = 0
        for layer in compact:
            lin = [m for m in layer.modules() if isinstance(m, CompactLinear)]
            total += seq_len * sum(m.weight.numel() for m in lin)
            if layer.attention is not None:
                a = layer.attention
                total += seq_len**2 * a.heads * (a.qk_width + a.v_width)
        return total
    from .adapters import MATRICES, adapter_for

    adapter = adapter_for(model.config)
    total = 0
    for layer in adapter.layers(model):
        parts = adapter.parts(layer)
        total += seq_len * sum(parts.linear(k).weight.numel() for k in MATRICES)
        total += seq_len**2 * 2 * parts.q.out_features
    return total


log = logging.getLogger("pgbert")


def machine() -> str:
    """What identifies the hardware a timing or a cost table was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo").read().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} {cpu}"


def environment(device: str, threads: int, dtype: str = "float32") -> dict:
    env = {
        "torch": torch.__version__,
        "device": device,
        "threads": threads,
        "dtype": dtype,
        "cpu": machine(),
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


@torch.no_grad()
def latency(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    vocab: int = 1000,
    dtype: str = "float32",
) -> dict:
    """Median wall time of a forward pass on random token ids (full attention mask)."""
    model = model.to(device, getattr(torch, dtype)).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        model(input_ids=ids, attention_mask=mask)
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        sync()
        times.append(time.perf_counter() - t)
    out = {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "repeats": repeats}
    if device.startswith("cuda"):
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


BUSY_SPREAD = (
    0.10  # interquartile range of the per-round speedups over their median: above, the machine was busy
)


def measure(
    model: nn.Module,
    against: nn.Module | None,
    batch_size: int,
    seq_len: int,
    threads: int | None = None,
    device: str = "cpu",
    repeats: int = 10,
    dtype: str = "float32",
) -> dict:
    """Latency of `model` (and of `against`, its dense reference), speedup and the FLOP-proportional limit.

    The two are timed interleaved, one forward pass each per round, so machine noise hits both alike; the
    speedup is the median of the per-round ratios, and `spread` (their interquartile range over the
    median) says how steady the machine was: above BUSY_SPREAD a warning is logged and `busy` is set."""
    if threads:
        torch.set_num_threads(threads)
    vocab = vocab_size(model)
    res = {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "environment": environment(device, torch.get_num_threads(), dtype),
        "model": {"params": params(model), "encoder_macs": encoder_macs(model, seq_len)},
    }
    if against is None:
        res["model"].update(
            latency(model, batch_size, seq_len, device, repeats=repeats, vocab=vocab, dtype=dtype)
        )
        return res
    res["against"] = {"params": params(against), "encoder_macs": encoder_macs(against, seq_len)}
    rounds = max(repeats, 5)
    warm = [latency(m, batch_size, seq_len, device, 2, 1, vocab, dtype) for m in (model, against)]
    times = [[], []]
    for _ in range(rounds):
        for i, m in enumerate((model, against)):
            times[i].append(latency(m, batch_size, seq_len, device, 0, 1, vocab, dtype)["median_ms"])
    for key, i in (("model", 0), ("against", 1)):
        res[key]["median_ms"] = statistics.median(times[i])
        res[key]["rounds"] = rounds
        res[key].update({k: v for k, v in warm[i].items() if k.startswith("peak")})
    ratios = sorted(d / m for m, d in zip(*times))
    q1, q3 = np.percentile(ratios, [25, 75])
    res["speedup"] = statistics.median(ratios)
    res["spread"] = float((q3 - q1) / res["speedup"])
    res["busy"] = res["spread"] > BUSY_SPREAD
    if res["busy"]:
        log.warning(
            "timings spread %.0f%% between rounds: the machine was busy, so the speedup (%.2fx) is uncertain; "
            "rerun `pgbert bench` on a quiet machine",
            100 * res["spread"],
            res["speedup"],
        )
    macs = res["model"]["encoder_macs"]  # 0 when every sublayer was removed: no finite limit
    res["flops_limit_speedup"] = res["against"]["encoder_macs"] / macs if macs else None
    return res


def vocab_size(model: nn.Module) -> int:
    cfg = getattr(model.config, "base_config", None) or model.config.to_dict()
    return int(cfg.get("vocab_size", 1000))


def measure_compact(pruned: nn.Module, masks: dict, dense: nn.Module, setting, repeats: int) -> dict:
    """Latency of the compact model built from `pruned` and its masks against the dense model, interleaved,
    at a deployment setting (profile.Setting); both models are left on the CPU in float32."""
    from .compact.model import to_compact

    s = setting
    compact = to_compact(pruned, masks)
    res = measure(compact, dense, s.batch_size, s.seq_len, s.threads or None, s.device, repeats, s.dtype)
    dense.to("cpu", torch.float32)
    return res

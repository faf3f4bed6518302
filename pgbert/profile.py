"""A cost model measured on the target: the time of each sublayer option the knapsack can choose.

`profile(...)` times, with the compact model's own modules (CompactAttention, CompactLinear), one layer's
attention for every kept head count, the FFN's two linears over a grid of kept neurons x input or output
width (gathers and output maps included, as the compact builder lays them out) and the grouped FFN options,
plus the fixed cost (embeddings, LayerNorms, pooler and head: the model with every sublayer removed).
Timed with torch.utils.benchmark (blocked_autorange; CUDA synchronised by it). Between grid points of kept
neurons the time is interpolated linearly. Tables are cached per (device, threads, dtype, geometry, batch,
seq) under ~/.cache/pgbert/profiles ($PGBERT_CACHE_DIR/profiles) with the machine recorded; a table from
another machine is ignored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils import benchmark

from .bench import environment, machine, vocab_size
from .compact.build import DENSE_COLS, DENSE_ROWS
from .compact.modeling_pgbert import CompactAttention, CompactLinear
from .errors import PgbertError

log = logging.getLogger("pgbert")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NEURON_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)  # measured; the 1/16 steps between interpolate
WIDTH_FRACTIONS = (
    1 / 4,
    1 / 2,
    3 / 4,
    1.0,
)  # the knapsack's free widths of an FFN pair (PAIR_FREE_FRACTIONS)
CACHE = Path(os.environ.get("PGBERT_CACHE_DIR") or Path.home() / ".cache" / "pgbert") / "profiles"
TABLE_VERSION = 4  # part of the cache key: tables measured by older code are not reused
COPIES = 4  # module copies timed in turn per grid point
BUSY_CHANGE = (
    0.25  # the first point timed again differs by more: the machine was busy, the table is not cached
)
MIN_RUN_TIME = 0.2  # seconds of timing per grid point (torch.utils.benchmark's blocked_autorange)


@dataclass(frozen=True)
class Setting:
    """Where the model will run: the deployment setting a profile is measured at."""

    device: str = "cpu"
    threads: int = 0  # 0: all of torch's threads
    dtype: str = "float32"
    batch_size: int = 32
    seq_len: int = 128


@dataclass(frozen=True)
class Geometry:
    layers: int
    hidden: int
    heads: int
    ffn: int
    act: str = "gelu"


class CostTable:
    """Measured times (ms) of one layer's sublayer options and of the fixed part, at one Setting."""

    def __init__(self, data: dict):
        self.data = data
        self.geometry = Geometry(**data["geometry"])
        self.attention_ms = data["attention_ms"]  # by kept head count 0..H
        self.fixed_ms = data["fixed_ms"]
        self._in = {int(w): np.array(v) for w, v in data["ffn_in_ms"].items()}  # by input width, per n
        self._out = {int(w): np.array(v) for w, v in data["ffn_out_ms"].items()}  # by output width, per n
        self._n = np.array(data["neurons"])
        self.grouped_ms = {tuple(map(int, k.split("x"))): v for k, v in data["grouped_ms"].items()}

    def ffn_ms(self, neurons: int, width_in: int, width_out: int) -> float:
        """FFN-in (neurons x width_in, with the activation) + FFN-out (width_out x neurons)."""
        if neurons == 0:
            return 0.0
        return float(
            np.interp(neurons, self._n, self._width(self._in, width_in))
            + np.interp(neurons, self._n, self._width(self._out, width_out))
        )

    @staticmethod
    def _width(table: dict[int, np.ndarray], width: int) -> np.ndarray:
        widths = sorted(table)
        if width in table:
            return table[width]
        i = int(np.clip(np.searchsorted(widths, width), 1, len(widths) - 1))
        lo, hi = widths[i - 1], widths[i]
        t = (width - lo) / (hi - lo)
        return (1 - t) * table[lo] + t * table[hi]

    def dense_ms(self) -> float:
        g = self.geometry
        return self.fixed_ms + g.layers * (
            self.attention_ms[g.heads] + self.ffn_ms(g.ffn, g.hidden, g.hidden)
        )


def _time_ms(fn, min_run_time: float) -> float:
    with torch.no_grad():
        fn()  # warm-up
        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=min_run_time)  # Timer's default is one thread
    return 1000 * m.median


def _linear(rows: int, cols: int, n_in: int, n_out: int, blocks: int = 1) -> CompactLinear:
    """A CompactLinear laid out as compact.build lays one out (gather below DENSE_COLS, map below DENSE_ROWS)."""
    if blocks == 1 and cols >= DENSE_COLS * n_in:
        cols = n_in
    gather = blocks > 1 or cols < n_in
    dense_rows = blocks == 1 and rows >= DENSE_ROWS * n_out
    rows = n_out if dense_rows else rows
    lin = CompactLinear(blocks, rows, cols, n_out, gather_in=gather, map_out=not dense_rows and rows != n_out)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02)
        if gather:
            lin.in_index.copy_(torch.randperm(n_in)[: blocks * cols].sort().values)
        if lin.map_out:
            lin.out_src.copy_(torch.randint(0, blocks * rows + 1, (n_out,)))
    return lin


def measure_table(
    geometry: Geometry,
    setting: Setting,
    fixed_model=None,
    min_run_time: float | None = None,
    quiet: bool = True,
) -> CostTable:
    """Time every option of one layer at `setting` (see the module doc)."""
    from tqdm.auto import tqdm

    g, s = geometry, setting
    min_run_time = min_run_time or MIN_RUN_TIME
    dtype, dev = DTYPES[s.dtype], s.device
    if s.threads and dev == "cpu":
        torch.set_num_threads(s.threads)
    tokens = s.batch_size * s.seq_len
    x3 = torch.randn(s.batch_size, s.seq_len, g.hidden, device=dev, dtype=dtype)
    x2 = x3.view(tokens, g.hidden)
    act = __import__("transformers").activations.ACT2FN[g.act]
    neurons = sorted({max(1, round(f * g.ffn)) for f in NEURON_FRACTIONS})
    widths = sorted({max(1, round(f * g.hidden)) for f in WIDTH_FRACTIONS})
    groups = [(G, k) for G in (2, 4) if g.ffn % G == 0 and g.hidden % G == 0 for k in range(2, G + 1)]
    total = g.heads + 2 * len(neurons) * len(widths) + 2 * len(groups) + (fixed_model is not None) + 1
    bar = tqdm(total=total, desc="profile", disable=quiet)
    t0 = time.perf_counter()

    def run(module, x):
        # A few distinct copies run in turn, so that a small module's weights are not all hot in the cache
        # (the rest of what a whole model adds is measured by prune's calibration rounds).
        mods = [copy.deepcopy(module).to(dev, dtype).eval() for _ in range(COPIES)]
        ms = _time_ms(lambda: [m(x) for m in mods], min_run_time) / COPIES
        bar.update(1)
        return ms

    attention = [0.0]
    for h in range(1, g.heads + 1):
        attention.append(run(_AttentionOnly(CompactAttention(_head_plan(g, h))), x3))
    ffn_in, ffn_out = {}, {}
    for w in widths:
        ffn_in[w] = [run(_WithAct(_linear(n, w, g.hidden, n), act), x2) for n in neurons]
    for w in widths:
        ffn_out[w] = [
            run(_linear(w, n, n, g.hidden), torch.randn(tokens, n, device=dev, dtype=dtype)) for n in neurons
        ]
    grouped = {}
    for G, k in groups:
        r, c = g.ffn // G, g.hidden // G
        t_in = run(_WithAct(_linear(r, c, g.hidden, k * r, blocks=k), act), x2)
        t_out = run(
            _linear(c, r, k * r, g.hidden, blocks=k), torch.randn(tokens, k * r, device=dev, dtype=dtype)
        )
        grouped[f"{G}x{k}"] = t_in + t_out
    fixed = 0.0
    if fixed_model is not None:
        fixed = run(_WholeModel(fixed_model, s), None)
    bar.close()
    # The first point timed again: on a machine busy with other work (or oversubscribed threads) the two
    # differ, and such a table must not be reused.
    again = run(_AttentionOnly(CompactAttention(_head_plan(g, 1))), x3)
    steady = abs(again / attention[1] - 1) <= BUSY_CHANGE
    return CostTable(
        {
            "geometry": asdict(g),
            "setting": asdict(s),
            "machine": machine(),
            "environment": environment(
                s.device, torch.get_num_threads() if s.device == "cpu" else 0, s.dtype
            ),
            "seconds": time.perf_counter() - t0,
            "attention_ms": attention,
            "neurons": neurons,
            "ffn_in_ms": {str(w): v for w, v in ffn_in.items()},
            "ffn_out_ms": {str(w): v for w, v in ffn_out.items()},
            "grouped_ms": grouped,
            "fixed_ms": fixed,
            "steady": steady,
            "first_point_again_ms": [attention[1], again],
        }
    )


def _head_plan(g: Geometry, h: int) -> dict:
    """The plan of a compact attention keeping h whole heads at full hidden width."""
    hd = g.hidden // g.heads
    plan = {"heads": h, "qk_width": hd, "v_width": hd, "scale": hd**-0.5}
    for name in ("q", "k", "v"):
        plan[name] = {"blocks": 1, "rows": h * hd, "cols": g.hidden, "n_out": h * hd}
        plan[name].update(gather_in=False, map_out=False)
    plan["o"] = {"blocks": 1, "rows": g.hidden, "cols": h * hd, "n_out": g.hidden}
    plan["o"].update(gather_in=False, map_out=False)
    return plan


class _AttentionOnly(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x, None)


class _WithAct(torch.nn.Module):
    def __init__(self, lin, act):
        super().__init__()
        self.lin, self.act = lin, act

    def forward(self, x):
        return self.act(self.lin(x))


class _WholeModel(torch.nn.Module):
    def __init__(self, model, s: Setting):
        super().__init__()
        self.model = model
        vocab = min(vocab_size(model), 1000)
        self.ids = torch.randint(5, vocab, (s.batch_size, s.seq_len), device=s.device)
        self.mask = torch.ones_like(self.ids)

    def forward(self, _):
        return self.model(input_ids=self.ids, attention_mask=self.mask)


def check_setting(s: Setting) -> None:
    if s.dtype not in DTYPES:
        raise PgbertError(f"--dtype must be one of {', '.join(DTYPES)}, got {s.dtype}")
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise PgbertError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if not (s.device == "cpu" or s.device.startswith("cuda")):
        raise PgbertError(f"--device must be cpu or cuda, got {s.device}")
    if s.batch_size < 1 or s.seq_len < 1 or s.threads < 0:
        raise PgbertError("--target-batch-size, --target-seq-len and --threads must be positive")


def cache_path(geometry: Geometry, s: Setting, cache: Path = CACHE) -> Path:
    threads = s.threads or torch.get_num_threads()
    key = json.dumps([TABLE_VERSION, asdict(geometry), {**asdict(s), "threads": threads}], sort_keys=True)
    return cache / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def cost_table(model, s: Setting, cache: Path | None = None, quiet: bool = True) -> CostTable:
    """The cached table for this model's geometry at `s`, or a new measurement (then cached)."""
    from .adapters import adapter_for

    check_setting(s)
    cfg = model.config
    a = adapter_for(cfg)
    geometry = Geometry(
        len(a.layers(model)), a.hidden_size(cfg), a.num_heads(cfg), a.ffn_size(cfg), a.activation(cfg)
    )
    path = cache_path(geometry, s, cache or CACHE)
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("machine") == machine():
            log.info("cost table from %s", path)
            return CostTable({**data, "cache": str(path), "cached": True})
        log.warning(
            "ignoring the cost table in %s: measured on another machine (%s)", path, data.get("machine")
        )
    table = measure_table(geometry, s, _fixed_model(model), quiet=quiet)
    if not table.data["steady"]:
        a, b = table.data["first_point_again_ms"]
        log.warning(
            "the machine was busy while profiling (one point took %.2f ms, then %.2f ms): this table is used "
            "once and not cached; profile on a quiet machine (`pgbert profile`)",
            a,
            b,
        )
        table.data.update(cache=None, cached=False)
        return table
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table.data, indent=1))
    tmp.replace(path)
    table.data.update(cache=str(path), cached=False)
    return table


def _fixed_model(model):
    """The compact model with every sublayer removed: embeddings, LayerNorms, pooler and head only."""
    from .adapters import prunable_names
    from .compact.model import to_compact

    masks = {n: torch.zeros_like(model.get_parameter(n)) for layer in prunable_names(model) for n in layer}
    return to_compact(model, masks)

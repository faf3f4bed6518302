"""Run folders: written atomically (temp dir, then rename), with config, versions, timings and a log."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import PgbertError

PACKAGES = ("pgbert", "torch", "transformers", "accelerate", "datasets", "safetensors", "onnx", "onnxruntime")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any work) if `path` exists and --overwrite was not given."""
    path = Path(path)
    cwd = Path.cwd().resolve()
    if path.resolve() == cwd or path.resolve() in cwd.parents:
        raise PgbertError(
            f"output folder {path} is the current folder or holds it; give a new folder, e.g. --output runs/out"
        )
    if path.exists() and not overwrite:
        raise PgbertError(f"output folder {path} already exists; choose another --output or pass --overwrite")
    if path.exists() and not path.is_dir():
        raise PgbertError(f"output path {path} is a file, not a folder; choose another --output")
    return path


def write_json(path: str | Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


@contextlib.contextmanager
def atomic_run_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success rename it to `path`, on failure delete it.

    A `log.txt` inside it receives the `pgbert` logger's records for the duration of the run.
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    handler = logging.FileHandler(tmp / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("pgbert")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        write_json(tmp / "versions.json", versions())
        yield tmp
    except BaseException:
        logger.removeHandler(handler)
        handler.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.removeHandler(handler)
    handler.close()
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "x")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)

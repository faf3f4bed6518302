"""pgbert: one-shot permutation-and-grouping (PGB) pruning for task-specific BERT-family encoders."""

__version__ = "0.1.0"

from .api import bench, compact, compare, demo, evaluate, export, finetune, load, prune  # noqa: E402

__all__ = [
    "bench",
    "compact",
    "compare",
    "demo",
    "evaluate",
    "export",
    "finetune",
    "load",
    "prune",
    "__version__",
]

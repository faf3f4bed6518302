"""pgbert: one-shot permutation-and-grouping (PGB) pruning for task-specific BERT-family encoders."""

__version__ = "0.1.0"

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
    "PruneConfig",
    "CompareConfig",
    "TrainConfig",
    "DataOptions",
    "__version__",
]


def __getattr__(name: str):
    """The API is imported on first use, so `pgbert --help` does not wait for torch and transformers."""
    if name in ("bench", "compact", "compare", "demo", "evaluate", "export", "finetune", "load", "prune"):
        from . import api

        return getattr(api, name)
    if name == "PruneConfig":
        from .config import PruneConfig

        return PruneConfig
    if name == "CompareConfig":
        from .comparison import CompareConfig

        return CompareConfig
    if name == "TrainConfig":
        from .training import TrainConfig

        return TrainConfig
    if name == "DataOptions":
        from .tasks import DataOptions

        return DataOptions
    raise AttributeError(f"module 'pgbert' has no attribute {name!r}")

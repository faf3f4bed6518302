"""pgbert: one-shot permutation-and-grouping (PGB) pruning for task-specific BERT-family encoders."""

__version__ = "0.1.0"

from .api import evaluate, finetune  # noqa: E402

__all__ = ["evaluate", "finetune", "__version__"]

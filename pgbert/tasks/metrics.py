"""GLUE metrics (scikit-learn / scipy implementations)."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def glue_metrics(names: tuple[str, ...], preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics named in `names`; `preds` are class indices (or scores for regression)."""
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, preds))
        elif name == "f1":
            binary = len(np.unique(labels)) <= 2 and set(np.unique(labels)) <= {0, 1}
            out[name] = float(f1_score(labels, preds, average="binary" if binary else "macro"))
        elif name == "matthews":
            out[name] = float(matthews_corrcoef(labels, preds))
        elif name == "pearson":
            out[name] = float(stats.pearsonr(preds, labels)[0])
        elif name == "spearman":
            out[name] = float(stats.spearmanr(preds, labels)[0])
        else:
            raise ValueError(f"unknown metric {name}")
    return out

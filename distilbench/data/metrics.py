"""GLUE metrics computed locally with numpy/scipy/scikit-learn.

Why not ``evaluate``: it downloads its metric scripts and so fails offline. Every function returns a
plain Python float on the 0-1 scale (not percent), and degenerate inputs (constant predictions, fewer
than two examples) give a defined number instead of NaN, so a run never stores NaN as a result.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import matthews_corrcoef

from ..errors import UsageError

ArrayLike = Sequence[float] | np.ndarray


def _pair(preds: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flatten both inputs and refuse a length mismatch (a silent broadcast would give a wrong score)."""
    p, y = np.asarray(preds).ravel(), np.asarray(labels).ravel()
    if p.shape != y.shape:
        raise UsageError(f"got {p.size} predictions for {y.size} labels; they must match one to one")
    return p, y


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of exact matches; 0.0 for no examples."""
    p, y = _pair(preds, labels)
    return float(np.mean(p == y)) if p.size else 0.0


def f1(preds: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class 1 (GLUE's MRPC/QQP F1); 0.0 when class 1 never occurs in either."""
    p, y = _pair(preds, labels)
    tp = int(np.sum((p == 1) & (y == 1)))
    wrong = int(np.sum((p == 1) != (y == 1)))  # false positives + false negatives
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def matthews(preds: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation (CoLA); 0.0 when either side is constant, where it is undefined."""
    p, y = _pair(preds, labels)
    if p.size == 0 or np.unique(p).size < 2 or np.unique(y).size < 2:
        return 0.0
    return float(matthews_corrcoef(y, p))


def _correlation(fn: Callable, preds: ArrayLike, labels: ArrayLike) -> float:
    p, y = _pair(preds, labels)
    p, y = p.astype(float), y.astype(float)
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(y) == 0:  # undefined: scipy would warn and return NaN
        return 0.0
    return float(fn(p, y)[0])


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation (STS-B); 0.0 for constant input or fewer than two examples."""
    return _correlation(stats.pearsonr, preds, labels)


def spearman(preds: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation (STS-B); 0.0 for constant input or fewer than two examples."""
    return _correlation(stats.spearmanr, preds, labels)


METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


class Scored(Protocol):
    """What :func:`compute_metrics` reads of a task (a :class:`distilbench.data.tasks.Task`; not imported here: tasks
    imports this module, and the import points one way only)."""

    metrics: Sequence[str]
    main_score: str


def compute_metrics(task: Scored, preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Every metric of ``task``, plus ``combined`` (their mean, GLUE's averaged score) when the task's
    main score is ``combined``, plus ``score`` = the main score, so callers never special-case tasks."""
    result = {name: METRICS[name](preds, labels) for name in task.metrics}
    if task.main_score == "combined":
        result["combined"] = float(np.mean([result[name] for name in task.metrics]))
    result["score"] = result[task.main_score]
    return result

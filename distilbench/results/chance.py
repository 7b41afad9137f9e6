"""Signal checks: is a student cell above the majority class, and what difference could a design detect at all.

**At chance.** A cell (one configuration, several seeds) is tested against the dev set's majority-class score, the
score of always predicting the most frequent dev label. It counts as *above chance* only when every test that its
stored rows allow says so at ``ALPHA`` (one-sided):

* over seeds: the one-sample t-test of the per-seed scores against the majority score (``alternative="greater"``;
  training randomness; needs 2 seeds);
* over dev examples: a paired bootstrap of the seeds' mean score minus the majority predictor's score on the same
  resampled examples (dev-sample noise; needs the stored per-example predictions and labels). One-sided centred
  p = (1 + #{b : δ*_b - δ >= δ}) / (B + 1) for an observed δ > 0, else 1; seeded, so reports rebuild exactly.

Extractive QA has no majority class: its rows store each question's F1 and a **floor**, the better of two
question-blind predictors (the empty answer, the context's first sentence; :mod:`distilbench.training.families.qa_run`) with
its per-question F1 (``extra.floor``). The check then tests the cell against that floor exactly as against the
majority class, pairing questions in the bootstrap.

Otherwise the cell is **at chance**: tables mark it and never rank it. Regression tasks have no majority class: the
check does not apply (``applies`` is False). A cell with one seed and no stored predictions cannot be checked
(``at_chance`` is None and the reason says why); it is not ranked either.

**Smallest detectable difference** of a paired t-test over n seeds (two-sided α, power 1-β), the usual
t approximation: δ = (t_{1-α/2, n-1} + t_{1-β, n-1}) · s_d / √n, where s_d is the standard deviation of the paired
per-seed differences (pooled over a family's pairs: the root mean of their variances). A non-significant
difference smaller than δ says nothing either way.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ..data.tasks import get_task
from ..errors import UsageError
from .per_example import _chunks, batched_score, predictions_of, task_metrics

ALPHA = 0.05
POWER = 0.8
SAMPLES = 2000  # bootstrap resamples of the example-level check
SEED = 0
MARK = "at chance"


@dataclass(frozen=True)
class ChanceResult:
    applies: bool  # False for regression (no majority class)
    majority: float  # majority-class main score × 100 (nan when not applicable)
    mean: float  # the cell's mean score × 100
    seed_p: float  # one-sided t-test p over seeds (nan: fewer than 2 seeds)
    example_p: float  # one-sided bootstrap p over dev examples (nan: no stored predictions)
    at_chance: bool | None  # None: not applicable or not checkable
    reason: str = ""
    floor: str = "majority class"  # what ``majority`` is the score of (extractive QA: its question-blind floor)

    @property
    def unranked(self) -> bool:
        """True when the cell must not be ranked: at chance, or a classification cell that could not be checked."""
        return self.applies and self.at_chance is not False


def majority_label(labels: Sequence[int]) -> int:
    """The most frequent label id (ties: the lowest id), as :meth:`distilbench.data.tasks.Task.majority_score` uses."""
    values, counts = np.unique(np.asarray(labels, dtype=int), return_counts=True)
    return int(values[np.argmax(counts)])


def seed_test(scores: Sequence[float], floor: float) -> float:
    """One-sided p that the mean of ``scores`` is above ``floor`` (one-sample t); nan for fewer than 2 scores."""
    x = np.round(np.asarray(scores, dtype=float) - floor, 10)
    if len(x) < 2:
        return math.nan
    if np.all(x == x[0]):  # zero variance: the limit of t
        return 0.0 if x[0] > 0 else 1.0
    return float(stats.ttest_1samp(x, 0.0, alternative="greater").pvalue)


def example_test(preds: Mapping[int, Sequence[int]], labels: Sequence[int], metrics: Sequence[str], main: str,
                 samples: int = SAMPLES, seed: int = SEED, floor_scores: Sequence[float] | None = None) -> tuple[float, float]:
    """(δ, one-sided p): δ = mean over seeds of score(predictions) - score(majority predictor), × 100, on the dev
    set; p from the paired bootstrap over dev examples described in the module docstring. ``floor_scores``: per-example
    scores of the floor predictor (extractive QA; ``preds`` are then per-example scores too) in place of the majority."""
    scored = floor_scores is not None
    y = np.asarray(labels) if scored else np.asarray(labels, dtype=int)
    n = len(y)
    seeds = sorted(preds)
    p = np.array([np.asarray(preds[s], dtype=float if scored else int) for s in seeds])
    base = np.asarray(floor_scores, dtype=float) if scored else np.full(n, majority_label(y))

    def diff(idx: np.ndarray) -> np.ndarray:
        yy = y[idx]
        floor = base[idx].mean(axis=1) if scored else batched_score(metrics, main, base[idx], yy)
        return 100 * np.mean([batched_score(metrics, main, p[k][idx], yy) - floor for k in range(len(seeds))], axis=0)

    observed = float(np.round(diff(np.arange(n)[None, :])[0], 10))
    if observed <= 0:
        return observed, 1.0
    rng = np.random.default_rng(seed)
    stats = np.round(np.concatenate([diff(rng.integers(0, n, size=(m, n))) for m in _chunks(samples, n)]), 10)
    return observed, (1 + int(np.sum(stats - observed >= observed))) / (samples + 1)


def check(scores: Mapping[int, float], majority: float | None, preds: Mapping[int, Sequence[int]] | None = None,
          labels: Sequence[int] | None = None, metrics: Sequence[str] = ("accuracy",), main: str = "accuracy",
          samples: int = SAMPLES, floor_scores: Sequence[float] | None = None) -> ChanceResult:
    """The signal check of one cell: ``scores`` {seed: score × 100}, ``majority`` × 100 (None: regression), the
    stored per-example predictions {seed: class ids} and dev labels when there are any. ``floor_scores``: extractive
    QA's floor per example (``majority`` is then its mean × 100, ``preds`` per-example scores)."""
    mean = float(np.mean(list(scores.values()))) if scores else math.nan
    if majority is None or (isinstance(majority, float) and math.isnan(majority)):
        return ChanceResult(False, math.nan, mean, math.nan, math.nan, None, "no majority class (regression)")
    seed_p = seed_test([scores[s] for s in sorted(scores)], majority)
    example_p = math.nan
    if preds and labels is not None and set(preds) == set(scores):
        example_p = example_test(preds, labels, metrics, main, samples, floor_scores=floor_scores)[1]
    ps = [p for p in (seed_p, example_p) if not math.isnan(p)]
    if not ps:
        return ChanceResult(True, majority, mean, seed_p, example_p, None,
                            "one seed and no stored predictions: cannot be checked")
    above = all(p < ALPHA for p in ps)
    return ChanceResult(True, majority, mean, seed_p, example_p, not above)


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true paired difference a two-sided paired t-test over ``n`` seeds detects with probability
    ``power`` at level ``alpha``, given the paired differences' standard deviation ``sd`` (t approximation)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd / math.sqrt(n))


def pooled_sd(differences: Sequence[Sequence[float]]) -> float:
    """Root mean of the sample variances (ddof=1) of several pairs' per-seed differences; nan without any pair of
    2 or more seeds."""
    variances = [float(np.var(np.asarray(d, dtype=float), ddof=1)) for d in differences if len(d) >= 2]
    return math.sqrt(sum(variances) / len(variances)) if variances else math.nan


# --------------------------------------------------------------------------- from store rows


def check_rows(rows: Sequence[Mapping], scale: float = 100.0, samples: int = SAMPLES) -> ChanceResult:
    """The signal check of one cell's store rows (dicts with seed, score, extra.majority / dev_predictions /
    dev_labels, task)."""
    if not rows:
        return ChanceResult(False, math.nan, math.nan, math.nan, math.nan, None, "no rows")
    scores = {int(r["seed"]): float(r["score"]) * scale for r in rows}
    preds, labels, _ = predictions_of(rows)
    names, main = task_metrics(str(rows[0].get("task")), rows[0])
    floor = (rows[0].get("extra") or {}).get("floor")
    if floor is not None:  # extractive QA: the question-blind floor in place of the majority class
        result = check(scores, floor["score"] * scale, preds or None, labels, names, main, samples, floor["scores"])
        return dataclasses.replace(result, floor=f"question-blind floor ({floor['name']})")
    majority = None
    try:
        task = get_task(str(rows[0].get("task")))
        regression = task.regression
    except UsageError:
        task, regression = None, bool((rows[0].get("extra") or {}).get("majority") is None)
    if not regression:
        if labels is not None and task is not None:
            majority = task.majority_score(labels)
        else:
            stored = {(r.get("extra") or {}).get("majority") for r in rows}
            majority = stored.pop() if len(stored) == 1 else None
    if majority is None and not regression:
        return ChanceResult(True, math.nan, float(np.mean(list(scores.values()))), math.nan, math.nan, None,
                            "no majority-class score stored")
    return check(scores, None if majority is None else majority * scale, preds or None, labels, names, main, samples)

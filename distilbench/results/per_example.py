"""Per-example paired tests between two cells on their stored dev predictions (`distilbench report --per-example`).

The seed-level tests of :mod:`distilbench.results.stats` answer "does objective A beat B over training randomness?". With 3-5
seeds they have little power, and they ignore that the dev set itself is a sample. These tests look at the examples:

* **Paired bootstrap over dev examples** (Koehn 2004; Berg-Kirkpatrick et al. 2012), seeds averaged. One resample
  draws N dev indices with replacement; the *same* indices score every seed of both cells, and the statistic is the
  mean over the shared seeds of score_a(seed) - score_b(seed), the task's main score × 100 (the quantity the tables
  and the seed-level test describe). The observed value δ is that mean on the real dev set. Reported: the 2.5/97.5
  percentiles of the resampled statistic (95% CI of δ over dev sampling) and the two-sided p of the centred test,
  p = (1 + #{b : |δ*_b - δ| >= |δ|}) / (B + 1) (the bootstrap distribution shifted to mean 0 is the null; the +1
  keeps p > 0). Works for every metric (accuracy, F1, MCC, Pearson, Spearman, their mean), because it recomputes
  the metric on each resample. The generator is seeded (``BOOTSTRAP_SEED``), so a report rebuilds byte for byte.
* **Exact McNemar** per seed, classification tasks only: on the examples where exactly one of the two runs of that
  seed is right, n01 = only A right, n10 = only B right, p = two-sided binomial test of n01 among n01 + n10 at 1/2
  (``scipy.stats.binomtest``). It tests accuracy, whatever the task's main score; one p per seed, uncorrected.

Pairs are made within the seed-level families (same task, teacher, init, student, setting) and only on the same
seed set: different seed sets are refused ("seeds differ"), as in :func:`distilbench.results.stats.paired_test`. Rows
without stored predictions (written before predictions were kept) or without labels give "n/a" with the reason.
Holm–Bonferroni runs over the bootstrap p-values of one family.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ..data import metrics as M
from .rows import is_result, row_dicts
from .stats import by_family, holm, task_info

BOOTSTRAP_SAMPLES = 2000
# rows whose stored predictions are per-example scores (extractive QA: each question's F1, ``extra.per_example``):
# the task's score is their mean, and this pseudo-metric is how the tests here score them
EXAMPLE_SCORE = "example-score"
BOOTSTRAP_SEED = 0
REGRESSION_METRICS = ("pearson", "spearman")
PERPLEXITY = "perplexity"  # causal LM: predictions = each window's mean NLL (nats), labels = its scored tokens


@dataclass(frozen=True)
class ExampleTest:
    """``a`` minus ``b`` on the dev examples, scores × 100 (a perplexity in its own units). NaN fields carry a ``reason``."""

    seeds: tuple[int, ...]
    n_examples: int
    diff: float  # mean over seeds of score_a - score_b on the real dev set
    ci_low: float
    ci_high: float
    bootstrap_p: float
    mcnemar: tuple[tuple[int, int, int, float], ...] = ()  # (seed, n01 only a right, n10 only b right, exact p)
    mismatched_seeds: bool = False
    reason: str = ""


def _nan(seeds=(), n=0, reason="", mismatched=False) -> ExampleTest:
    return ExampleTest(tuple(seeds), n, math.nan, math.nan, math.nan, math.nan, (), mismatched, reason)


def batched_score(metrics: Sequence[str], main: str, preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The main score of each row of ``preds``/``labels`` (shape R × N), on the 0-1 scale; the same numbers as
    :func:`distilbench.data.metrics.compute_metrics` row by row (a test checks it), vectorised where it matters."""
    if main == EXAMPLE_SCORE:  # per-example scores (extractive QA: each question's F1): the score is their mean
        return np.asarray(preds, dtype=float).mean(axis=1)
    if main == PERPLEXITY:  # exp of the token-weighted mean NLL over the (resampled) windows
        tokens = np.asarray(labels, dtype=float)
        return np.exp((np.asarray(preds, dtype=float) * tokens).sum(axis=1) / tokens.sum(axis=1))

    def one(name: str) -> np.ndarray:
        p, y = preds, labels
        if name == "accuracy":
            return (p == y).mean(axis=1)
        if name == "f1":
            tp = ((p == 1) & (y == 1)).sum(axis=1)
            wrong = ((p == 1) != (y == 1)).sum(axis=1)
            return np.where(tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
        if name == "pearson":
            p, y = p.astype(float), y.astype(float)
            pc, yc = p - p.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
            den = np.sqrt((pc * pc).sum(axis=1) * (yc * yc).sum(axis=1))
            constant = (np.ptp(p, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
            return np.where(constant | (den == 0), 0.0, (pc * yc).sum(axis=1) / np.where(den == 0, 1, den))
        if name == "mcc" and np.isin(p, (0, 1)).all() and np.isin(y, (0, 1)).all():
            tp, tn = ((p == 1) & (y == 1)).sum(1).astype(float), ((p == 0) & (y == 0)).sum(1).astype(float)
            fp, fn = ((p == 1) & (y == 0)).sum(1).astype(float), ((p == 0) & (y == 1)).sum(1).astype(float)
            den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            return np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1), 0.0)
        fn_ = M.METRICS[name]  # spearman, multi-class mcc: row by row
        return np.array([fn_(p[i], y[i]) for i in range(len(p))])

    scores = {name: one(name) for name in metrics}
    if main == "combined":
        return np.mean([scores[n] for n in metrics], axis=0)
    return scores[main] if main in scores else one(main)


def mcnemar(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar on one pair of runs: (n01 only a right, n10 only b right, two-sided binomial p)."""
    right_a, right_b = pred_a == labels, pred_b == labels
    n01, n10 = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p = 1.0 if n01 + n10 == 0 else float(stats.binomtest(n01, n01 + n10, 0.5).pvalue)
    return n01, n10, p


def per_example_test(a: Mapping[int, Sequence[float]], b: Mapping[int, Sequence[float]], labels: Sequence[float],
                     metrics: Sequence[str], main: str, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> ExampleTest:
    """Paired bootstrap over examples (seeds averaged) and exact McNemar per seed; ``a``/``b``: {seed: predictions
    in dev order}; ``labels``: the dev labels in the same order; ``metrics``/``main``: the task's (as in
    :class:`distilbench.data.tasks.Task`)."""
    if set(a) != set(b):
        return _nan(reason=f"seeds differ (only in a: {sorted(set(a) - set(b))}, only in b: {sorted(set(b) - set(a))})",
                    mismatched=True)
    seeds = sorted(a)
    if not seeds:
        return _nan(reason="no seeds")
    if samples < 1:
        raise ValueError(f"bootstrap samples must be at least 1 (got {samples})")
    y = np.asarray(labels)
    n = len(y)
    lengths = sorted({len(side[s]) for side in (a, b) for s in seeds})
    if n == 0 or lengths != [n]:
        return _nan(seeds, n, f"predictions and labels differ in length (predictions: {lengths}, labels: {n})")
    regression = _measure(metrics, main) != "classification"
    scale = 1.0 if main == PERPLEXITY else 100.0  # a perplexity difference stays in its own units
    pa = np.array([np.asarray(a[s], dtype=float if regression else int) for s in seeds])
    pb = np.array([np.asarray(b[s], dtype=float if regression else int) for s in seeds])

    def diff(idx: np.ndarray) -> np.ndarray:  # idx: R × N -> R mean-over-seeds differences (× 100)
        yy = y[idx]
        total = np.zeros(len(idx))
        for k in range(len(seeds)):
            total += batched_score(metrics, main, pa[k][idx], yy) - batched_score(metrics, main, pb[k][idx], yy)
        return scale * total / len(seeds)

    observed = float(np.round(diff(np.arange(n)[None, :])[0], 10))
    rng = np.random.default_rng(seed)
    stats = np.concatenate([diff(rng.integers(0, n, size=(m, n))) for m in _chunks(samples, n)])
    stats = np.round(stats, 10)  # float noise must not decide ties with |δ|
    low, high = (float(x) for x in np.percentile(stats, [2.5, 97.5]))
    p = (1 + int(np.sum(np.abs(stats - observed) >= abs(observed)))) / (samples + 1)  # δ = 0: every b counts, p = 1
    tests = () if regression else tuple((s, *mcnemar(pa[k], pb[k], y)) for k, s in enumerate(seeds))
    return ExampleTest(tuple(seeds), n, observed, low, high, float(p), tests)


def _chunks(samples: int, n: int) -> list[int]:
    """Resamples per chunk so one index chunk stays near 4 M entries (memory), summing to ``samples``."""
    size = max(1, 4_000_000 // max(n, 1))
    return [min(size, samples - i) for i in range(0, samples, size)]


# --------------------------------------------------------------------------- from store rows


def predictions_of(rows: Sequence[Mapping]) -> tuple[dict[int, list], list | None, str]:
    """{seed: dev predictions}, the dev labels and a reason when a row lacks either (rows of one cell)."""
    preds: dict[int, list] = {}
    labels = None
    for r in rows:
        extra = r.get("extra") or {}
        if extra.get("dev_predictions") is None:
            return {}, None, "no per-example predictions stored (rows written before they were kept)"
        if extra.get("dev_labels") is None:
            return {}, None, "no dev labels stored with the predictions (rows written before they were kept)"
        if labels is not None and list(extra["dev_labels"]) != labels:
            return {}, None, "the cell's rows were scored on different dev labels"
        labels = list(extra["dev_labels"])
        preds[int(r["seed"])] = list(extra["dev_predictions"])
    return preds, labels, ""


def task_metrics(task: str, row: Mapping) -> tuple[list[str], str]:
    """(metric names, main score) of a task (:func:`distilbench.results.stats.task_info`); a task no longer registered
    whose row stored no main score takes its first stored metric, else accuracy."""
    if (row.get("extra") or {}).get("per_example"):  # per-question scores (extractive QA): their mean is the score
        return [EXAMPLE_SCORE], EXAMPLE_SCORE
    info = task_info(task, row)
    return info.metrics, info.main_score or (info.metrics[0] if info.metrics else "accuracy")


def _measure(metrics: Sequence[str], main: str) -> str:
    """What one example's prediction is, for the report: McNemar needs right/wrong (classification)."""
    if main == EXAMPLE_SCORE:
        return "per-question"
    if main == PERPLEXITY:
        return "perplexity"
    return "regression" if main in REGRESSION_METRICS or any(m in REGRESSION_METRICS for m in metrics) else "classification"


@dataclass(frozen=True)
class ExampleComparison:
    family: str
    task: str
    a: str
    b: str
    a_config_hash: str
    b_config_hash: str
    result: ExampleTest
    holm_p: float
    higher_is_better: bool = True  # False for perplexity: a negative Δ means the row is better
    measure: str = "classification"  # classification | regression | perplexity | per-question (extractive QA)


def compare_examples(rows: Sequence[Mapping], comparisons: Sequence, samples: int = BOOTSTRAP_SAMPLES) -> list[ExampleComparison]:
    """The per-example tests of every comparison in ``comparisons`` (:func:`distilbench.results.stats.compare` output:
    objective pairs, and init pairs: one objective from two student inits, e.g. paper 002 Table 3's "lower layers
    lift KD"), family by family in input order, each Holm-corrected over its own bootstrap p-values."""
    by_cell: dict[tuple, list[dict]] = {}
    for r in row_dicts(rows):
        if is_result(r):
            by_cell.setdefault((str(r.get("task")), str(r.get("config_hash"))), []).append(r)
    out: list[ExampleComparison] = []
    for family, members in by_family(comparisons).items():
        results, measures = [], []
        for cmp in members:
            rows_a = by_cell.get((cmp.task, cmp.a_cell.config_hash), [])
            rows_b = by_cell.get((cmp.task, cmp.b_cell.config_hash), [])
            pa, la, why_a = predictions_of(rows_a)
            pb, lb, why_b = predictions_of(rows_b)
            names, main = task_metrics(cmp.task, rows_a[0]) if rows_a else ((), "accuracy")
            measures.append(_measure(names, main))
            if why_a or why_b:
                results.append(_nan(reason=why_a or why_b))
            elif la != lb:
                results.append(_nan(reason="the two cells were scored on different dev labels"))
            else:
                results.append(per_example_test(pa, pb, la, names, main, samples))
        adjusted = holm([r.bootstrap_p for r in results])
        out += [ExampleComparison(family, c.task, c.a, c.b, c.a_cell.config_hash, c.b_cell.config_hash, r, h,
                                  c.a_cell.higher_is_better, m)
                for c, r, h, m in zip(members, results, adjusted, measures)]
    return out

"""Metrics agree with scipy/scikit-learn, combined scores are GLUE's mean, degenerate inputs stay numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from distilbench.errors import UsageError
from distilbench.data.metrics import METRICS, accuracy, compute_metrics, f1, matthews, pearson, spearman
from distilbench.data.tasks import get_task

PREDS = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
LABELS = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0]
SCORES = [0.1, 1.7, 2.2, 3.9, 4.8, 2.5, 0.0, 3.3]
GOLD = [0.0, 2.0, 1.8, 4.2, 5.0, 2.4, 0.6, 2.9]


def test_classification_metrics_match_sklearn() -> None:
    assert accuracy(PREDS, LABELS) == pytest.approx(skm.accuracy_score(LABELS, PREDS)) == pytest.approx(0.7)
    assert f1(PREDS, LABELS) == pytest.approx(skm.f1_score(LABELS, PREDS)) == pytest.approx(0.7272727, abs=1e-6)
    assert matthews(PREDS, LABELS) == pytest.approx(skm.matthews_corrcoef(LABELS, PREDS))
    assert matthews(PREDS, LABELS) == pytest.approx(0.4082483, abs=1e-6)
    # F1 is of class 1 only: confusions between other classes are neither false positives nor negatives
    p3, y3 = [2, 0, 1, 1, 2], [0, 2, 1, 0, 1]
    assert f1(p3, y3) == pytest.approx(skm.f1_score(y3, p3, labels=[1], average="macro")) == pytest.approx(0.5)


def test_correlations_match_scipy() -> None:
    assert pearson(SCORES, GOLD) == pytest.approx(stats.pearsonr(SCORES, GOLD)[0])
    assert spearman(SCORES, GOLD) == pytest.approx(stats.spearmanr(SCORES, GOLD)[0])
    assert 0.9 < pearson(SCORES, GOLD) < 1.0
    # numpy arrays and (n, 1) regression-head outputs are accepted too
    assert pearson(np.array(SCORES)[:, None], np.array(GOLD)) == pytest.approx(pearson(SCORES, GOLD))


def test_metrics_table_and_types() -> None:
    assert set(METRICS) == {"accuracy", "f1", "mcc", "pearson", "spearman"}
    for fn in METRICS.values():
        assert type(fn(PREDS, LABELS)) is float


def test_degenerate_inputs_give_numbers() -> None:
    const = [1] * len(LABELS)
    for fn in (accuracy, f1, matthews, pearson, spearman):
        for args in ((const, LABELS), (LABELS, const), ([], []), ([1], [1])):
            value = fn(*args)
            assert type(value) is float and math.isfinite(value), (fn.__name__, args)
    assert matthews(const, LABELS) == 0.0
    assert pearson([2.0] * 8, GOLD) == 0.0 and spearman([2.0] * 8, GOLD) == 0.0
    assert f1([0, 0], [0, 0]) == 0.0  # class 1 never occurs: defined as 0, as sklearn's zero_division=0
    assert accuracy(const, LABELS) == pytest.approx(0.5)  # LABELS holds five 1s of ten


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(UsageError, match="3 predictions for 2 labels"):
        accuracy([1, 0, 1], [1, 0])


def test_compute_metrics_combined_scores() -> None:
    # MRPC by hand: 3 of 4 right -> acc 0.75; tp=1 fp=1 fn=0 -> f1 2/3; combined = (0.75 + 2/3) / 2
    out = compute_metrics(get_task("mrpc"), [1, 1, 0, 0], [1, 0, 0, 0])
    assert out == pytest.approx({"accuracy": 0.75, "f1": 2 / 3, "combined": 17 / 24, "score": 17 / 24})

    out = compute_metrics(get_task("stsb"), SCORES, GOLD)
    assert set(out) == {"pearson", "spearman", "combined", "score"}
    assert out["combined"] == pytest.approx((out["pearson"] + out["spearman"]) / 2) == out["score"]

    out = compute_metrics(get_task("cola"), PREDS, LABELS)
    assert out == {"mcc": pytest.approx(skm.matthews_corrcoef(LABELS, PREDS)), "score": out["mcc"]}

    out = compute_metrics(get_task("rte"), [0, 1, 1], [0, 1, 0])
    assert out == {"accuracy": pytest.approx(2 / 3), "score": pytest.approx(2 / 3)}
    assert all(type(v) is float for v in out.values())

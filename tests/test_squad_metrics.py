"""SQuAD EM/F1 against hand-worked cases of the official definitions (v1.1 and v2.0), on the 0-1 scale."""
from __future__ import annotations

import pytest

from distilbench.data.squad_metrics import (answer_tokens, best_threshold, evaluate_v1, evaluate_v2, exact_match, f1_score,
                                            normalize_answer)
from distilbench.errors import UsageError


def test_normalisation_lowercases_and_strips_punctuation_articles_and_whitespace():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear;\tand THE end.") == "apple pear and end"
    assert normalize_answer("Theatre anatomy") == "theatre anatomy"  # only whole words are articles
    assert normalize_answer("A.") == ""  # punctuation goes first, then the article it uncovered
    assert normalize_answer("Levi's  Stadium") == "levis stadium"  # the apostrophe is removed, not a space
    assert normalize_answer("24–10") == "24–10"  # the en dash is not in string.punctuation
    assert answer_tokens("") == [] and answer_tokens("the") == []


def test_exact_match_after_normalisation():
    assert exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match("Denver Broncos.", "denver broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_f1_hand_worked():
    # pred {denver, broncos, team} vs gold {denver, broncos}: P = 2/3, R = 1 -> F1 = 2PR/(P+R) = 0.8
    assert f1_score("Denver Broncos team", "the Denver Broncos") == pytest.approx(0.8)
    # tokens counted with multiplicity: x x y vs x y y share one x and one y: P = R = 2/3
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score("Carolina", "Denver Broncos") == 0.0


def test_empty_answers_v1_and_v2_rules():
    assert f1_score("", "Denver") == 0.0 and f1_score("Denver", "") == 0.0
    assert f1_score("", "The") == 1.0  # v2.0: both normalise to nothing -> 1
    assert f1_score("", "The", empty_is_match=False) == 0.0  # v1.1: no common token -> 0
    assert exact_match("", "The") == 1.0


def test_v1_takes_the_best_gold_answer_and_averages():
    golds = {"q1": ["Levi's Stadium", "Santa Clara, California", "Santa Clara"],
             "q2": ["Santa Clara, California", "California"],
             "q3": ["Denver Broncos"]}
    preds = {"q1": "Santa Clara", "q2": "Clara California", "q3": "Carolina Panthers"}
    # q1: EM 1, F1 1; q2: F1 vs "santa clara california" = 2*1*(2/3)/(5/3) = 0.8, vs "california" = 2/3 -> 0.8, EM 0;
    # q3: nothing in common
    result = evaluate_v1(golds, preds)
    assert result["exact"] == pytest.approx(1 / 3)
    assert result["f1"] == pytest.approx((1 + 0.8 + 0) / 3)


V2_GOLDS = {"a": ["Denver Broncos"], "b": [], "c": ["Carolina Panthers"], "d": []}
V2_PREDS = {"a": "Denver Broncos", "b": "", "c": "Panthers", "d": "Levi's"}


def test_v2_has_ans_and_no_ans_breakdown():
    r = evaluate_v2(V2_GOLDS, V2_PREDS)
    # exact a 1, b 1 ("" vs [""]), c 0, d 0; f1 a 1, b 1, c 2*1*0.5/1.5 = 2/3, d 0
    assert r["exact"] == pytest.approx(0.5) and r["f1"] == pytest.approx((1 + 1 + 2 / 3) / 4)
    assert r["HasAns_exact"] == pytest.approx(0.5) and r["HasAns_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert r["NoAns_exact"] == pytest.approx(0.5) and r["NoAns_f1"] == pytest.approx(0.5)
    assert (r["total"], r["HasAns_total"], r["NoAns_total"]) == (4, 2, 2)
    assert "best_f1" not in r  # no no-answer probabilities: no threshold to find
    only_answerable = evaluate_v2({"a": ["x"]}, {"a": "x"})
    assert "NoAns_exact" not in only_answerable and only_answerable["HasAns_exact"] == 1.0


def test_v2_threshold_and_best_threshold():
    na = {"a": -3.0, "b": 2.0, "c": 0.5, "d": 1.5}
    r = evaluate_v2(V2_GOLDS, V2_PREDS, na, na_prob_thresh=1.0)
    # b and d exceed 1.0 and are answered "": both unanswerable, both right; a and c keep their scores
    assert r["exact"] == pytest.approx(3 / 4) and r["f1"] == pytest.approx((1 + 1 + 2 / 3 + 1) / 4)
    # sweep from "everything unanswered" (2 right): a (-3.0) +1 -> 3; c (0.5) +0 EM / +2/3 F1; d (1.5) -1; b (2.0) 0
    assert (r["best_exact"], r["best_exact_thresh"]) == (pytest.approx(3 / 4), -3.0)
    assert (r["best_f1"], r["best_f1_thresh"]) == (pytest.approx((3 + 2 / 3) / 4), 0.5)
    # no answerable question gains anything: the best is to answer nothing, threshold 0.0 (the official start value)
    assert best_threshold({"d": "Levi's"}, {"d": 0.0}, {"d": 5.0}, {"d": False}) == (1.0, 0.0)


def test_missing_predictions_are_refused():
    with pytest.raises(UsageError, match="no prediction for 1 of 2"):
        evaluate_v1({"a": ["x"], "b": ["y"]}, {"a": "x"})
    with pytest.raises(UsageError, match="no no-answer probability"):
        evaluate_v2({"a": ["x"]}, {"a": "x"}, {})

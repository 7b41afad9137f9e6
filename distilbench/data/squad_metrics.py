"""SQuAD's exact match and F1, written from the definitions of the official evaluation scripts (v1.1 and v2.0).

Why not ``evaluate``: its squad metrics are hub scripts and fail offline. Pure Python, no numpy.

The definitions, as the official scripts state them:

- **normalisation**: lower-case; drop every character of ``string.punctuation``; replace the whole words *a*, *an*,
  *the* by a space; collapse whitespace. Applied in that order to the prediction and to each gold answer.
- **exact match** (EM) of a question: 1 if the normalised prediction equals a normalised gold answer, else 0.
- **F1** of a question: the harmonic mean of token precision and recall between the normalised prediction and a gold
  answer (tokens split on whitespace, counted with multiplicity), the maximum over the gold answers.
- v1.1: an empty token list on either side gives F1 0. v2.0: it gives 1 when both are empty, else 0, and gold answers
  that normalise to nothing are dropped (an unanswerable question's only gold answer is the empty string).
- v2.0 reports ``HasAns_*`` (answerable questions) and ``NoAns_*`` (unanswerable) beside the totals, applies a
  no-answer probability threshold (a question whose ``na_prob`` exceeds it is answered with the empty string), and
  finds the threshold that maximises EM and F1 (``best_exact_thresh``, ``best_f1_thresh``).

Scores are on the 0-1 scale like every other metric here (the official scripts print percent); thresholds and
``*_total`` counts are as given.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Mapping, Sequence

from ..errors import UsageError

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation, the articles a/an/the and extra whitespace (the official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, empty_is_match: bool = True) -> float:
    """Token F1. ``empty_is_match``: v2.0's rule (both empty -> 1, one empty -> 0); False is v1.1's (empty -> 0)."""
    pred, ref = answer_tokens(prediction), answer_tokens(gold)
    if not pred or not ref:
        return float(empty_is_match and pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _check_ids(golds: Mapping[str, Sequence[str]], preds: Mapping[str, str]) -> None:
    missing = [q for q in golds if q not in preds]
    if missing:
        raise UsageError(f"no prediction for {len(missing)} of {len(golds)} question(s), e.g. {missing[0]!r}")


def evaluate_v1(golds: Mapping[str, Sequence[str]], preds: Mapping[str, str]) -> dict[str, float]:
    """SQuAD v1.1: mean over questions of the best EM and F1 against any gold answer. ``golds``: question id -> its
    gold answer texts (at least one each); ``preds``: question id -> predicted text."""
    _check_ids(golds, preds)
    if not golds:
        return {"exact": 0.0, "f1": 0.0}
    em = [max(exact_match(preds[q], g) for g in answers) for q, answers in golds.items()]
    f1 = [max(f1_score(preds[q], g, empty_is_match=False) for g in answers) for q, answers in golds.items()]
    return {"exact": sum(em) / len(em), "f1": sum(f1) / len(f1)}


def raw_scores_v2(golds: Mapping[str, Sequence[str]], preds: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-question EM and F1 before any threshold (v2.0: empty-normalising gold answers dropped, else ``[""]``)."""
    _check_ids(golds, preds)
    exact, f1 = {}, {}
    for q, answers in golds.items():
        kept = [a for a in answers if normalize_answer(a)] or [""]
        exact[q] = max(exact_match(preds[q], a) for a in kept)
        f1[q] = max(f1_score(preds[q], a) for a in kept)
    return exact, f1


def _thresholded(scores: Mapping[str, float], na_probs: Mapping[str, float], has_ans: Mapping[str, bool],
                 thresh: float) -> dict[str, float]:
    """A question whose no-answer probability exceeds ``thresh`` is answered with "": right iff it has no answer."""
    return {q: (float(not has_ans[q]) if na_probs[q] > thresh else s) for q, s in scores.items()}


def _means(exact: Mapping[str, float], f1: Mapping[str, float], ids: Sequence[str], prefix: str) -> dict[str, float]:
    n = len(ids)
    return {f"{prefix}exact": sum(exact[q] for q in ids) / n, f"{prefix}f1": sum(f1[q] for q in ids) / n,
            f"{prefix}total": float(n)}


def best_threshold(preds: Mapping[str, str], scores: Mapping[str, float], na_probs: Mapping[str, float],
                   has_ans: Mapping[str, bool]) -> tuple[float, float]:
    """The score reached with the best no-answer threshold, and that threshold (the official ``find_best_thresh``).

    Start with every question answered "" (score: the share of unanswerable ones), then, in increasing ``na_prob``
    order, answer one more question with its prediction: an answerable one gains its score, an unanswerable one loses
    1 if the prediction is not empty. The best running total, and the ``na_prob`` where it was reached, win."""
    current = best = float(sum(not has_ans[q] for q in scores))
    thresh = 0.0
    for q in sorted(scores, key=lambda k: na_probs[k]):
        current += scores[q] if has_ans[q] else (-1.0 if preds[q] else 0.0)
        if current > best:
            best, thresh = current, na_probs[q]
    return best / len(scores), thresh


def evaluate_v2(golds: Mapping[str, Sequence[str]], preds: Mapping[str, str],
                na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0) -> dict[str, float]:
    """SQuAD v2.0. ``golds``: question id -> gold texts (empty: unanswerable); ``na_probs``: question id -> no-answer
    probability or score (missing: 0 for every question, as the official script assumes without a file). Returns
    ``exact``, ``f1``, ``total``, ``HasAns_*`` and ``NoAns_*`` where such questions exist, and ``best_exact``,
    ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh`` when ``na_probs`` is given."""
    exact_raw, f1_raw = raw_scores_v2(golds, preds)
    if not golds:
        return {"exact": 0.0, "f1": 0.0, "total": 0.0}
    probs = dict(na_probs) if na_probs is not None else {q: 0.0 for q in golds}
    missing = [q for q in golds if q not in probs]
    if missing:
        raise UsageError(f"no no-answer probability for {len(missing)} question(s), e.g. {missing[0]!r}")
    has_ans = {q: bool(answers) for q, answers in golds.items()}  # the official rule: any gold answer listed
    exact = _thresholded(exact_raw, probs, has_ans, na_prob_thresh)
    f1 = _thresholded(f1_raw, probs, has_ans, na_prob_thresh)
    out = _means(exact, f1, list(golds), "")
    for prefix, ids in (("HasAns_", [q for q in golds if has_ans[q]]), ("NoAns_", [q for q in golds if not has_ans[q]])):
        if ids:
            out.update(_means(exact, f1, ids, prefix))
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = best_threshold(preds, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = best_threshold(preds, f1_raw, probs, has_ans)
    return out

"""From per-window start/end scores to one answer per question, and its SQuAD scores.

For every window the ``n_best`` highest start scores and the ``n_best`` highest end scores among the context tokens
are paired; a pair is a legal span when end >= start and it holds at most ``max_answer_length`` tokens (a span in the
question or in the special tokens cannot arise: only context tokens are candidates). A span's score is its start
score plus its end score; the best legal span over all the question's windows is the answer, and one character span
found in two overlapping windows counts once, with its higher score.

SQuAD v2.0: a window's no-answer score is its classification token's start + end score (position 0), and the
question's is the lowest over its windows (the window that best holds the answer decides, as in BERT's reference
code). The question is answered "" when that score exceeds the best span's by more than the threshold; the margin
itself is the ``na_prob`` the official evaluation sweeps for its best threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .qa import NO_ANSWER, QAWindows
from .qa_tasks import QAExample, QATask
from .squad_metrics import evaluate_v1, evaluate_v2


@dataclass(frozen=True)
class Candidate:
    text: str
    start: int  # [start, end) characters in the context
    end: int
    score: float  # start score + end score
    window: int


@dataclass(frozen=True)
class QAPrediction:
    qid: str
    candidates: tuple[Candidate, ...]  # the n best legal spans over all windows, best first; empty: none is legal
    null_score: float  # lowest no-answer score over the windows

    @property
    def text(self) -> str:
        """The best legal span ("" when no window has one): the v1.1 answer, and v2.0's before its threshold."""
        return self.candidates[0].text if self.candidates else ""

    @property
    def null_margin(self) -> float:
        """No-answer score minus the best span's (+inf without a legal span): above the threshold, answer ""."""
        return self.null_score - self.candidates[0].score if self.candidates else math.inf

    def answer(self, null_threshold: float | None) -> str:
        """The answer: the best span, or "" when ``null_threshold`` is given and the margin exceeds it (v2.0)."""
        return "" if null_threshold is not None and self.null_margin > null_threshold else self.text


def _top(scores: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` highest scores among the allowed ones (ties: the earlier position first)."""
    pos = np.flatnonzero(allowed)
    return pos[np.argsort(-scores[pos], kind="stable")[:n]]


def window_candidates(windows: QAWindows, w: int, start: np.ndarray, end: np.ndarray, n_best: int,
                      max_answer_length: int) -> list[Candidate]:
    """The ``n_best`` best legal spans of window ``w`` among its ``n_best`` x ``n_best`` start/end candidates."""
    spans = windows.context_spans[w]
    context = np.array([s is not None for s in spans])
    text = windows.examples[windows.example_of[w]].context
    s, e = np.meshgrid(_top(start, context, n_best), _top(end, context, n_best), indexing="ij")
    legal = (e >= s) & (e - s + 1 <= max_answer_length)
    s, e = s[legal], e[legal]
    # the window's n_best best are enough: a span among a question's n_best best is among its own window's
    keep = np.argsort(-(start[s] + end[e]), kind="stable")[:n_best]
    return [Candidate(text[spans[i][0]:spans[j][1]], spans[i][0], spans[j][1], float(start[i] + end[j]), w)
            for i, j in zip(s[keep].tolist(), e[keep].tolist())]


def best_answers(windows: QAWindows, start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
                 n_best: int = 20, max_answer_length: int = 30) -> list[QAPrediction]:
    """One :class:`QAPrediction` per question of ``windows.examples`` (in their order). ``start_logits[w]`` and
    ``end_logits[w]`` are window ``w``'s scores, one per token; padding past the window's length is ignored."""
    if len(start_logits) != len(windows) or len(end_logits) != len(windows):
        raise ValueError(f"got scores for {len(start_logits)}/{len(end_logits)} windows, expected {len(windows)}")
    by_example: dict[int, list[int]] = {}
    for w, e in enumerate(windows.example_of):
        by_example.setdefault(e, []).append(w)
    out = []
    for position, example in enumerate(windows.examples):
        best: dict[tuple[int, int], Candidate] = {}
        null = math.inf
        for w in by_example.get(position, []):
            n = len(windows.input_ids[w])
            start = np.asarray(start_logits[w], dtype=np.float64)[:n]
            end = np.asarray(end_logits[w], dtype=np.float64)[:n]
            null = min(null, float(start[NO_ANSWER] + end[NO_ANSWER]))
            for c in window_candidates(windows, w, start, end, n_best, max_answer_length):
                key = (c.start, c.end)
                if key not in best or c.score > best[key].score:
                    best[key] = c
        ranked = sorted(best.values(), key=lambda c: (-c.score, c.window, c.start, c.end))[:n_best]
        out.append(QAPrediction(example.qid, tuple(ranked), null))
    return out


def score_answers(task: QATask, examples: Sequence[QAExample], predictions: Sequence[QAPrediction]) -> dict[str, float]:
    """The task's SQuAD metrics (v1.1 or v2.0 by ``task.with_negative``) plus ``score`` = the main score."""
    golds = {e.qid: [a.text for a in e.answers] for e in examples}
    if task.with_negative:
        margins = {p.qid: p.null_margin for p in predictions}
        result = evaluate_v2(golds, {p.qid: p.text for p in predictions}, margins, task.null_threshold)
    else:
        result = evaluate_v1(golds, {p.qid: p.text for p in predictions})
    result["score"] = result[task.main_score]
    return result

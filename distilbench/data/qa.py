"""Extractive QA windows: question + a stretch of context per window, with start/end labels and character offsets.

A context longer than a window is cut into overlapping windows by the fast tokenizer (``return_overflowing_tokens``,
``stride`` = the context tokens consecutive windows share). Each window keeps, per token, its character span in the
context (None for question and special tokens), which is how post-processing (:mod:`distilbench.data.qa_answers`)
turns token positions back into answer text. A window that does not hold the whole answer, and every window of an
unanswerable question, is labelled (0, 0): the classification token, whose start and end scores are the no-answer
score.

Windows, not questions, are the unit of batching: ``lengths()`` and ``subset()`` work like
:class:`distilbench.data.batching.Encoded`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UsageError
from .qa_tasks import QAExample, QATask, check_windows

Span = tuple[int, int]  # [start, end) characters of a token in the context
NO_ANSWER = 0  # the label of a window without the answer: the classification token's position


@dataclass
class QAWindows:
    """The windows of one tokenised split; ``example_of[w]`` is the position in ``examples`` of window ``w``'s
    question (windows of one question are consecutive)."""

    examples: list[QAExample]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    example_of: list[int]
    context_spans: list[list[Span | None]]
    start_positions: list[int]
    end_positions: list[int]
    pad_id: int
    window_idx: list[int] | None = None  # each window's number among its split's windows, kept by subset(); None: 0..n-1

    def __post_init__(self) -> None:
        if self.window_idx is None:
            self.window_idx = list(range(len(self.input_ids)))

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids])

    def windows_of(self, position: int) -> list[int]:
        return [w for w, e in enumerate(self.example_of) if e == position]

    def subset(self, windows: Sequence[int]) -> "QAWindows":
        """These windows (their questions stay in ``examples``, so positions keep their meaning)."""
        pick = list(windows)
        return QAWindows(self.examples, [self.input_ids[w] for w in pick],
                         [self.token_type_ids[w] for w in pick] if self.token_type_ids is not None else None,
                         [self.example_of[w] for w in pick], [self.context_spans[w] for w in pick],
                         [self.start_positions[w] for w in pick], [self.end_positions[w] for w in pick], self.pad_id,
                         [self.window_idx[w] for w in pick])

    def for_examples(self, examples: Sequence[QAExample]) -> "QAWindows":
        """The windows of ``examples`` (a part of this split's questions, matched by question id), re-based on them:
        ``examples`` becomes the question list, each window keeps its ``window_idx``."""
        position = {e.qid: p for p, e in enumerate(self.examples)}
        new = {position[e.qid]: i for i, e in enumerate(examples)}
        picked = self.subset([w for w, e in enumerate(self.example_of) if e in new])
        picked.examples = list(examples)
        picked.example_of = [new[e] for e in picked.example_of]
        return picked

    def answer_text(self, window: int) -> str:
        """The context text the window's labels point at ("" for a no-answer label): what round-trips the gold."""
        s, e = self.start_positions[window], self.end_positions[window]
        if s == NO_ANSWER:
            return ""
        first, last = self.context_spans[window][s], self.context_spans[window][e]
        return self.examples[self.example_of[window]].context[first[0]:last[1]]


def _check_tokenizer(tokenizer, max_length: int, doc_stride: int, max_question_length: int) -> None:
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"extractive QA needs a fast tokenizer (character offsets); {name} has none")
    if tokenizer.padding_side != "right":
        raise UsageError(f"extractive QA puts the question first and pads on the right; {name} pads on the "
                         f"{tokenizer.padding_side}")
    check_windows(max_length, doc_stride, max_question_length)
    room = max_length - max_question_length - tokenizer.num_special_tokens_to_add(pair=True)
    if doc_stride >= room:
        raise UsageError(f"doc_stride {doc_stride} must be below the context tokens a window holds: max_length "
                         f"{max_length} - max_question_length {max_question_length} - the special tokens = {room}")


def _cut_questions(tokenizer, questions: list[str], max_question_length: int) -> list[str]:
    """Questions stripped of surrounding whitespace and cut after ``max_question_length`` tokens, so that every
    window holds more context than consecutive windows share."""
    questions = [q.strip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [q if len(offsets) <= max_question_length else q[:offsets[max_question_length - 1][1]]
            for q, offsets in zip(questions, enc["offset_mapping"])]


def window_labels(spans: Sequence[Span | None], example: QAExample) -> tuple[int, int]:
    """(start, end) token positions of the example's first answer in one window, (0, 0) when the window does not hold
    all of it. Start: the first context token ending after the answer's first character; end: the last context token
    starting before its end (so an answer starting or ending inside a token takes the whole token)."""
    if not example.answers:
        return NO_ANSWER, NO_ANSWER
    answer = example.answers[0]
    first, last = answer.start, answer.start + len(answer.text)
    context = [i for i, s in enumerate(spans) if s is not None]
    if not context or spans[context[0]][0] > first or spans[context[-1]][1] < last:
        return NO_ANSWER, NO_ANSWER
    start = next(i for i in context if spans[i][1] > first)
    end = next(i for i in reversed(context) if spans[i][0] < last)
    return (start, end) if end >= start else (NO_ANSWER, NO_ANSWER)


def encode_qa(tokenizer, examples: list[QAExample], max_length: int, doc_stride: int,
              max_question_length: int = 64) -> QAWindows:
    """Tokenise question/context pairs into windows of at most ``max_length`` tokens with their labels."""
    _check_tokenizer(tokenizer, max_length, doc_stride, max_question_length)
    questions = _cut_questions(tokenizer, [e.question for e in examples], max_question_length)
    enc = tokenizer(questions, [e.context for e in examples], truncation="only_second", max_length=max_length,
                    stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    if any(ids[0] != tokenizer.cls_token_id for ids in enc["input_ids"]):
        raise UsageError(f"extractive QA reads the no-answer score at position {NO_ANSWER}; "
                         f"{tokenizer.name_or_path} does not put its classification token there")
    spans, starts, ends = [], [], []
    for w, offsets in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(w)
        spans.append([(int(o[0]), int(o[1])) if s == 1 else None for o, s in zip(offsets, seq)])
        start, end = window_labels(spans[-1], examples[enc["overflow_to_sample_mapping"][w]])
        starts.append(start)
        ends.append(end)
    return QAWindows(examples, enc["input_ids"], enc.get("token_type_ids"), list(enc["overflow_to_sample_mapping"]),
                     spans, starts, ends, tokenizer.pad_token_id)


DEFAULT_MAX_LENGTH = 128  # RunConfig.max_length's default: left there, the task's own window length applies


def window_settings(cfg, task: QATask) -> tuple[int, int, int]:
    """(max_length, doc_stride, max_question_length) of the run's windows (``cfg``: anything with ``max_length``)."""
    if cfg.max_length == DEFAULT_MAX_LENGTH or cfg.max_length == task.max_length:
        return task.max_length, task.doc_stride, task.max_question_length
    length = cfg.max_length
    return length, task.doc_stride * length // task.max_length, min(task.max_question_length, length // 3)

"""What a run of an extractive QA task (SQuAD, ``family: extractive-qa``) does differently from classification, in
one place: the QA family's runner (:mod:`.qa_runner`) calls it, the shared modules never do.

- **Windows.** A question becomes one or more windows (:func:`distilbench.data.qa.encode_qa`) with the task's
  ``max_length``/``doc_stride``; ``--max-length`` set away from its default 128 overrides the task's window length, and
  the stride then keeps the task's ratio (384/128 -> 256/85). Windows are the unit of batching.
- **Stable window numbers.** The teacher caches are indexed by a window's number among the windows of the whole
  training file (``QAWindows.window_idx``), so every split of it (the seed's training part, the selection part, the
  teacher's part) takes its windows out of that one tokenisation (:class:`QAEncodings`): window ``k`` is the same window
  for every seed, objective and run.
- **Teacher logits cache.** Per window: the start and end scores of every token, ``[n_windows, max_length, 2]`` (0
  past a window's length; objectives mask padded positions), stored beside the teacher as ``span-logits-KEY.pt``: a
  name and key no classification cache uses.
- **Scores.** EM and F1 from the best span per question (:mod:`.qa_eval`); the main score is the task's (F1).
- **Per-example values** (what :mod:`distilbench.results.per_example` and :mod:`distilbench.results.chance` read): a
  question's value is **its F1** (v2.0: after the no-answer threshold), so the task's F1 is their mean; the row's
  ``dev_labels`` are the question ids (two cells pair only on the same questions) and ``extra.per_example = "f1"``
  says the predictions are per-question scores, not class ids.
- **The signal check's floor.** There is no majority class. The floor is the better (higher mean F1 on dev) of two
  predictors that never read the question: the **empty answer** (v2.0's "no answer" for every question, the analogue
  of always predicting the majority class; F1 0 on v1.1) and the context's **first sentence**. Its per-question F1
  is stored with each row (``extra.floor``), so the check pairs the student with it question by question; its mean
  is the row's ``majority``. A student that learned nothing about questions does not beat it.
- **Saving** (``--save-students``): the student as an ``AutoModelForQuestionAnswering`` folder whose tokenizer's
  ``model_max_length`` is the window length (:func:`window_settings`), its card naming the question-blind floor
  (:mod:`.export`).
"""
from __future__ import annotations

import re
import time
from typing import Callable

import numpy as np
import torch

from ...config import RunConfig
from ...data.batching import fingerprint
from ...data.qa import QAWindows, encode_qa, window_settings
from ...data.qa_tasks import QAExample, QATask
from ...data.squad_metrics import f1_score, raw_scores_v2
from ...errors import UsageError
from ...hashing import stable_hash
from ...models.loading import load_tokenizer
from ..loop.precision import identity_part
from ..teachers.teacher import TeacherRecord, file_lock, save_table

TASK_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice", "ForCausalLM",
              "LMHeadModel", "ForConditionalGeneration")


def encode_for(task: QATask, cfg: RunConfig, tokenizer, examples) -> QAWindows:
    """A split tokenised as the run's QA windows."""
    return encode_qa(tokenizer, examples, *window_settings(cfg, task))


def check_head(model: str, task, config) -> None:
    """A QA task needs an encoder checkpoint (pretrained, or already a QA model): one fine-tuned with another task's
    head is refused, one line, rather than silently losing that head."""
    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith(TASK_HEADS)]
    if heads:
        raise UsageError(f"{model} is a {heads[0]} checkpoint; task {task.name} is extractive QA and needs an encoder "
                         f"checkpoint (pretrained or *ForQuestionAnswering), not a model with another task's head")


def window_tokenisation(record: TeacherRecord, cfg: RunConfig, task: QATask) -> str:
    return f"{record.key}:qa-windows:{':'.join(map(str, window_settings(cfg, task)))}"


class QAEncodings:
    """The runner's tokenisations of a QA task (in place of :class:`.sources.Encodings`): any part of the training file
    takes its windows from the file's one tokenisation, keeping their numbers; other examples (dev) are tokenised
    on their own."""

    def __init__(self, cfg: RunConfig, task: QATask, train_all: list[QAExample]):
        self.cfg, self.task, self.train_all = cfg, task, train_all
        self.train_ids = {e.qid for e in train_all}
        self.cache: dict[tuple, QAWindows] = {}

    def __call__(self, tokenizer, examples: list[QAExample], max_length: int | None = None) -> QAWindows:
        name = (tokenizer.name_or_path, len(tokenizer))
        if all(e.qid in self.train_ids for e in examples):
            full = self._encode(name, tokenizer, self.train_all)
            return full if len(examples) == len(self.train_all) else full.for_examples(examples)
        return self._encode(name, tokenizer, examples)

    def _encode(self, name: tuple, tokenizer, examples: list[QAExample]) -> QAWindows:
        key = (*name, fingerprint(examples))
        if key not in self.cache:
            self.cache[key] = encode_for(self.task, self.cfg, tokenizer, examples)
        return self.cache[key]


@torch.no_grad()
def span_logits(scores: Callable, windows: QAWindows, width: int) -> torch.Tensor:
    """``[len(windows), width, 2]`` start/end scores (0 past each window's length) from ``scores(windows) -> (start
    list, end list)`` (:func:`.qa_eval.span_scores`)."""
    start, end = scores(windows)
    out = torch.zeros(len(windows), width, 2)
    for w, (s, e) in enumerate(zip(start, end)):
        out[w, :len(s), 0], out[w, :len(e), 1] = torch.from_numpy(s), torch.from_numpy(e)
    return out


def span_logits_path(record: TeacherRecord, windows: QAWindows, tokenisation: str, precision: str = "fp32"):
    key = stable_hash({"kind": "qa-span-logits", "train": fingerprint(windows.examples), "windows": len(windows),
                       "tokenisation": tokenisation, **identity_part(precision)})
    return record.path / f"span-logits-{key}.pt"


def teacher_span_logits(record: TeacherRecord, windows: QAWindows, compute: Callable[[QAWindows], torch.Tensor],
                        tokenisation: str, precision: str = "fp32") -> torch.Tensor:
    """The teacher's start/end scores on every window of the training file, indexed by window number, computed once
    (``compute(windows)``, e.g. :func:`span_logits` of the teacher) and stored beside the teacher."""
    path = span_logits_path(record, windows, tokenisation, precision)
    if not path.exists():
        with file_lock(record.path.with_suffix(".lock")):
            if not path.exists():
                start = time.perf_counter()
                values = compute(windows)
                table = torch.zeros(max(windows.window_idx) + 1, *values.shape[1:])
                table[torch.tensor(windows.window_idx)] = values
                save_table(record, path, table, start)
    return torch.load(path, weights_only=True)


# --------------------------------------------------------------------------- per-question values, the floor


def question_f1(task: QATask, examples: list[QAExample], answers: list[str]) -> list[float]:
    """Each question's F1 under the task's rules (v1.1: best over gold answers; v2.0: the official raw score)."""
    if task.with_negative:
        f1 = raw_scores_v2({e.qid: [a.text for a in e.answers] for e in examples},
                           {e.qid: a for e, a in zip(examples, answers)})[1]
        return [f1[e.qid] for e in examples]
    return [max(f1_score(a, g.text, empty_is_match=False) for g in e.answers) for e, a in zip(examples, answers)]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentence(context: str) -> str:
    return _SENTENCE_END.split(context.strip(), maxsplit=1)[0]


def floor(task: QATask, examples: list[QAExample]) -> dict:
    """The signal check's floor (module docstring): the better question-blind predictor, its mean and per-question F1."""
    options = {"empty answer": question_f1(task, examples, [""] * len(examples)),
               "first sentence": question_f1(task, examples, [first_sentence(e.context) for e in examples])}
    name = max(options, key=lambda k: np.mean(options[k]))
    return {"name": name, "score": float(np.mean(options[name])), "scores": [round(x, 6) for x in options[name]]}


def dev_results(predictions, task: QATask, examples: list[QAExample], metrics: dict) -> tuple[list[float], list[str], dict]:
    """(per-question F1 in dev order, the question ids, the row's QA extras) from the predictions scored as
    ``metrics`` (:func:`distilbench.data.qa_answers.score_answers`)."""
    threshold = task.null_threshold if task.with_negative else None
    values = question_f1(task, examples, [p.answer(threshold) for p in predictions])
    if not np.isclose(np.mean(values), metrics["f1"]):
        raise RuntimeError(f"per-question F1 mean {np.mean(values)} differs from the scored F1 {metrics['f1']}")
    return values, [e.qid for e in examples], {"per_example": "f1", "floor": floor(task, examples)}


def check_qa_run(cfg: RunConfig, task: QATask, objective, teacher_config) -> None:
    """What a QA run refuses before anything trains: a teacher with another task's head; a student with its own
    vocabulary (span scores are compared token by token); multi-teacher objectives (they read class logits).
    ``--save-students`` is taken: the student is saved as an ``AutoModelForQuestionAnswering`` folder whose tokenizer
    cuts at the run's window length (:mod:`distilbench.training.export.students`)."""
    check_head(cfg.teacher, task, teacher_config)
    if objective.multi_teacher:
        raise UsageError(f"{objective.name} weighs class distributions of a team; task {task.name} is extractive QA: "
                         f"use a single-teacher objective (kd, lwd, ted, ...)")
    if cfg.init.startswith("pretrained:") and objective.uses_teacher:
        student = cfg.init.partition(":")[2]
        if load_tokenizer(cfg.teacher).get_vocab() != load_tokenizer(student).get_vocab():
            raise UsageError(f"task {task.name} compares start/end scores token by token: student {student} needs "
                             f"the teacher's tokenizer ({cfg.teacher})")

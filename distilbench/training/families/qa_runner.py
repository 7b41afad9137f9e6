"""The runner of an extractive QA task (``family: extractive-qa``): the :class:`.runner.Runner` with the family hooks
that differ for span prediction (what differs, and why, is in :mod:`.qa_run`): windows instead of sentences, span
scores instead of class logits, per-question F1 and a question-blind floor instead of a majority class."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from ...data.qa_answers import score_answers
from ..teachers.inference import TeacherInference
from ..loop.qa_eval import predict_answers, span_scores
from .qa_run import QAEncodings, check_qa_run, dev_results, encode_for, span_logits, span_logits_path, teacher_span_logits, \
    window_settings, window_tokenisation
from ..runs.runner import Runner
from ..runs.sources import TeacherSources
from ..teachers.teacher import TeacherRecord


class QATeacherInference(TeacherInference):
    def encode(self, tokenizer, examples):
        return encode_for(self.task, self.cfg, tokenizer, examples)

    @torch.no_grad()
    def logits(self, net: nn.Module, enc) -> torch.Tensor:
        """Per window: the start and end scores of every token, ``[n_windows, max_length, 2]``."""
        width = window_settings(self.cfg, self.task)[0]
        return span_logits(lambda w: span_scores(net, w, self.cfg, self.accelerator), enc, width)


class QATeacherSources(TeacherSources):
    def logits_cache(self, record: TeacherRecord, enc_all, teacher_net) -> tuple[str, Any, Any]:
        """Per window, keyed apart from classification logits."""
        tokenisation = window_tokenisation(record, self.cfg, self.plan.task)
        compute = partial(self.inference.logits, teacher_net)
        return (tokenisation, teacher_span_logits(record, enc_all, compute, tokenisation, self.precision),
                span_logits_path(record, enc_all, tokenisation, self.precision))


class QARunner(Runner):
    @classmethod
    def check_run(cls, cfg, task, teacher_config, train, dev, objectives) -> None:
        check_qa_run(cfg, task, objectives[0], teacher_config)

    def new_encodings(self):
        return QAEncodings(self.cfg, self.plan.task, self.plan.train_all)

    def inference(self) -> TeacherInference:
        return QATeacherInference(self.cfg, self.plan.task, self.accelerator, self.trainer(), self.log)

    def sources(self) -> TeacherSources:
        return QATeacherSources(self.cfg, self.plan, self.tokenizer, self.encodings, self.inference(), self.precision,
                                self.log, self.team)

    def majority(self) -> None:
        return None  # no majority class: the signal check's floor is question-blind (qa_run.floor), per row

    def score_dev(self, student, tokenizer) -> tuple:
        """Per question: its F1, with the question ids in place of labels."""
        plan = self.plan
        answers = predict_answers(student, self._encode(tokenizer, plan.dev), plan.task, self.cfg, self.accelerator)
        metrics = score_answers(plan.task, plan.dev, answers)
        preds, labels, extra = dev_results(answers, plan.task, plan.dev, metrics)
        return preds, labels, metrics, extra

    def saved_head(self) -> tuple:
        return None, window_settings(self.cfg, self.plan.task)[0]  # no labels; the tokenizer cuts at the window length

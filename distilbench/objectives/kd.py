"""Vanilla KD (Hinton et al. 2015): ``CE + alpha_kd * T^2 * KL(softmax(z_T/T) || softmax(z_S/T))``; paper 002's
prediction-layer transfer, which every layer objective also carries. Beside it, ``DivergenceKD``: the same frame with
another divergence in place of the KL, which kd-reverse and gkd-jsd fill in."""
from __future__ import annotations

import torch

from ..errors import UsageError
from .base import MLM_MASK, PREDICTION_OPTIONS, LossOutput, Objective, Outputs, Stage, register_objective
from .distributions import token_mask


@register_objective("kd")
class KD(Objective):
    """Vanilla knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    Classification: ``L = CE(z_S, y) + alpha_kd * T^2 * KL(softmax(z_T / T) || softmax(z_S / T))``, KL averaged over
    the batch. The T^2 factor keeps the soft term's gradient scale independent of T (Hinton et al. §2).
    This is paper 002's prediction-layer transfer L_pred = CE(z_T/t, z_S/t), which differs from the KL only by the
    teacher's entropy, a constant for the student. Regression (STS-B): ``L = MSE(z_S, y) + alpha_kd * MSE(z_S, z_T)``.
    Causal LM (token logits ``[B, L, V]``): CE is the mean next-token NLL and the KL is averaged over the real
    (non-padded) positions, each position's next-token distribution one row (:mod:`.distributions`).
    """

    version = "1.0"
    separable = True  # CE and the batch-mean KL are means over examples
    paper = "Hinton et al. 2015, soft targets with temperature T: CE + alpha*T^2*KL"
    options = PREDICTION_OPTIONS

    def forward(self, student: Outputs, teacher: Outputs | None, batch, stage: Stage) -> LossOutput:
        mask = batch.get("attention_mask")  # extractive QA and causal LM: the real tokens (classification ignores it)
        ce = self.task_loss(student.logits, batch["labels"], mask)
        soft, scale = self.soft_loss(student.logits, teacher.logits, mask)
        return LossOutput(ce + self.ctx.config.alpha_kd * scale * soft, {"ce": ce.detach(), "kd": soft.detach()})

    def label_free(self, student: Outputs, teacher: Outputs, batch) -> LossOutput:
        """Task-agnostic KD on the MLM head (DistilBERT's L_ce; paper 002 §4's vanilla KD): ``T^2 * 1/N sum KL(p_T ||
        p_S)`` over the N masked positions ``batch[MLM_MASK]``, each position's token distribution one row."""
        soft, scale = self.soft_loss(student.logits, teacher.logits, batch[MLM_MASK])
        return LossOutput(scale * soft, {"kd": soft.detach()})


class DivergenceKD(Objective):
    """The frame ``kd``'s variants share (kd-reverse, gkd-jsd): ``L = CE + alpha_kd * T^2 * D(p_T, p_S)``, with ``D``
    a divergence of the softened distributions averaged over the rows (examples, or real token positions of token
    logits ``[B, L, V]``), from :meth:`divergence`. Not registered itself. Class distributions only: a regression
    task is refused."""

    separable = True  # CE and D are means over examples (over tokens for an LM, exact for packed, equal-length blocks)
    options = PREDICTION_OPTIONS

    def __init__(self, ctx):
        super().__init__(ctx)
        if self.task.regression:
            raise UsageError(f"{self.name} compares class or token distributions; {self.task.name} is a regression task "
                             "(use kd, whose regression form is an MSE)")
        if self.task.span_output:
            raise UsageError(f"{self.name} compares class or token distributions; {self.task.name} is extractive QA "
                             "(use kd, which compares the start and end distributions)")

    def divergence(self, student: torch.Tensor, teacher, mask: torch.Tensor | None, temperature: float) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Outputs | None, batch, stage: Stage) -> LossOutput:
        t = self.ctx.config.temperature
        ce = self.task_loss(student.logits, batch["labels"])
        soft = self.divergence(student.logits, teacher.logits, token_mask(student.logits, batch), t)
        return LossOutput(ce + self.ctx.config.alpha_kd * t * t * soft, {"ce": ce.detach(), self.name: soft.detach()})

    def label_free(self, student: Outputs, teacher: Outputs, batch) -> LossOutput:
        """Task-agnostic, on the MLM head: ``T^2 * D(p_T, p_S)`` over the masked positions ``batch[MLM_MASK]``."""
        t = self.ctx.config.temperature
        soft = self.divergence(student.logits, teacher.logits, batch[MLM_MASK], t)
        return LossOutput(t * t * soft, {self.name: soft.detach()})

"""Logit MSE (Ba & Caruana 2014): ``CE + logit_mse_weight * MSE(z_S, z_T)`` on the raw logits."""
from __future__ import annotations

import torch.nn.functional as F

from ..errors import UsageError
from ..options import Option
from .base import LossOutput, Objective, Outputs, Stage, register_objective


@register_objective("logit-mse")
class LogitMSE(Objective):
    """``L = CE(z_S, y) + w * MSE(z_S, z_T)``: the student matches the teacher's raw logits."""

    version = "1.0"  # part of every run's identity: bump it when the formula changes
    paper = "Ba & Caruana 2014: CE + w*MSE(z_S, z_T)"  # shown by `distilbench ls objectives`
    separable = True  # a mean over examples, so a batch may run as micro-batches
    # its options: flag, YAML key, check, search range; their values enter each result's identity
    options = (Option("logit_mse_weight", float, 1.0, "logit-mse: weight w of the logit MSE term.", low=0.0,
                      search=("float", 0.1, 10.0, "log")),)

    @classmethod
    def check_options(cls, config, task) -> None:  # refuse in one line, before anything runs
        if not task.sentence_level or task.regression:
            raise UsageError(f"logit-mse compares one logit vector per example; {task.name} has none to compare")

    def forward(self, student: Outputs, teacher: Outputs | None, batch, stage: Stage) -> LossOutput:
        ce = self.task_loss(student.logits, batch["labels"])
        mse = F.mse_loss(student.logits.float(), teacher.logits.detach().float())
        return LossOutput(ce + self.ctx.config.logit_mse_weight * mse, {"ce": ce.detach(), "logit-mse": mse.detach()})

"""The no-teacher baseline: the student fine-tuned on the task loss alone (CE, or MSE for regression)."""
from __future__ import annotations

from .base import LossOutput, Objective, Outputs, Stage, register_objective


@register_objective("none")
class NoTeacher(Objective):
    """The baseline every table needs: the same student, fine-tuned on the task loss alone, with no teacher."""

    version = "1.0"
    paper = "baseline: plain fine-tuning of the student (CE, or MSE for regression)"
    uses_teacher = False
    separable = True  # CE (or MSE) is a mean over examples

    def forward(self, student: Outputs, teacher: Outputs | None, batch, stage: Stage) -> LossOutput:
        loss = self.task_loss(student.logits, batch["labels"], batch.get("attention_mask"))
        return LossOutput(loss, {"ce": loss.detach()})

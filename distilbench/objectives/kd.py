"""Vanilla KD (Hinton et al. 2015): ``CE + alpha_kd * T^2 * KL(softmax(z_T/T) || softmax(z_S/T))``; paper 002's
prediction-layer transfer, which every layer objective also carries."""
from __future__ import annotations

from .base import LossOutput, Objective, Outputs, Stage, register_objective


@register_objective("kd")
class KD(Objective):
    """Vanilla knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    Classification: ``L = CE(z_S, y) + alpha_kd * T^2 * KL(softmax(z_T / T) || softmax(z_S / T))``, KL averaged over
    the batch. The T^2 factor keeps the soft term's gradient scale independent of T (Hinton et al. §2).
    This is paper 002's prediction-layer transfer L_pred = CE(z_T/t, z_S/t), which differs from the KL only by the
    teacher's entropy, a constant for the student. Regression (STS-B): ``L = MSE(z_S, y) + alpha_kd * MSE(z_S, z_T)``.
    """

    version = "1.0"
    separable = True  # CE and the batch-mean KL are means over examples
    paper = "Hinton et al. 2015, soft targets with temperature T: CE + alpha*T^2*KL"
    params = ("temperature", "alpha_kd")
    search_space = {"temperature": ("float", 1.0, 8.0, "log"), "alpha_kd": ("float", 0.1, 10.0, "log")}

    def forward(self, student: Outputs, teacher: Outputs | None, batch, stage: Stage) -> LossOutput:
        mask = batch.get("attention_mask")  # extractive QA: the windows' real tokens (unused by classification)
        ce = self.task_loss(student.logits, batch["labels"], mask)
        soft, scale = self.soft_loss(student.logits, teacher.logits, mask)
        return LossOutput(ce + self.ctx.config.alpha_kd * scale * soft, {"ce": ce.detach(), "kd": soft.detach()})

from __future__ import annotations

import torch.nn.functional as F

from .base import LossOutput, Objective, Outputs, Stage


class KD(Objective):
    """Vanilla knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    Classification: ``L = CE(z_S, y) + alpha_kd * T^2 * KL(softmax(z_T / T) || softmax(z_S / T))``, KL averaged over
    the batch. The T^2 factor keeps the soft term's gradient scale independent of T (Hinton et al. §2).
    This is paper 002's prediction-layer transfer L_pred = CE(z_T/t, z_S/t), which differs from the KL only by the
    teacher's entropy, a constant for the student. Regression (STS-B): ``L = MSE(z_S, y) + alpha_kd * MSE(z_S, z_T)``.
    """

    name = "kd"
    version = "1.0"
    paper = "Hinton et al. 2015, soft targets with temperature T: CE + alpha*T^2*KL"
    params = ("temperature", "alpha_kd")

    def forward(self, student: Outputs, teacher: Outputs | None, batch, stage: Stage) -> LossOutput:
        ce = self.task_loss(student.logits, batch["labels"])
        t = self.ctx.config.temperature
        zs, zt = student.logits.float(), teacher.logits.float()
        if self.task.regression:
            soft = F.mse_loss(zs, zt)
            loss = ce + self.ctx.config.alpha_kd * soft
        else:
            soft = F.kl_div(F.log_softmax(zs / t, -1), F.log_softmax(zt / t, -1), reduction="batchmean", log_target=True)
            loss = ce + self.ctx.config.alpha_kd * t * t * soft
        return LossOutput(loss, {"ce": ce.detach(), "kd": soft.detach()})

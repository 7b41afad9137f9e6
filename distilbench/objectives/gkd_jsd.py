"""Generalised Jensen-Shannon distillation (GKD's divergence), interpolating between forward and reverse KL."""
from __future__ import annotations

import torch

from ..options import Option
from .base import register_objective
from .distributions import generalized_jsd
from .kd import DivergenceKD


@register_objective("gkd-jsd", aliases=("jsd",))
class GKDJSD(DivergenceKD):
    """Generalised JSD distillation (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes", ICLR 2024, Eq. 1), as TRL's ``GKDTrainer.generalized_jsd_loss`` computes it::

        L = CE + alpha_kd * T^2 * 1/N sum_rows JSD_beta(p_T, p_S)
        JSD_beta = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M),   M = beta * p_T + (1 - beta) * p_S,  0 < beta < 1
        JSD_0 = KL(p_T || p_S) (forward, = kd's term),   JSD_1 = KL(p_S || p_T) (reverse, = kd-reverse's term)

    ``beta`` is ``--gkd-beta`` (0.5 by default: the symmetric JSD); rows as in ``kd`` (examples, or real token
    positions). The end points are TRL's: the interior value tends to ``beta * KL(p_T || p_S)`` as beta -> 0 and
    ``(1 - beta) * KL(p_S || p_T)`` as beta -> 1, so the loss is continuous in beta only up to that factor; at 0 and 1
    it is the full KL. This is GKD's supervised setting (its lambda = 0: the fixed training text, no sequences sampled
    from the student); GKD itself trains on the divergence alone, here it joins CE in ``kd``'s frame.
    """

    version = "1.0"
    paper = "Agarwal et al. 2024 (GKD) Eq. 1, generalised JSD as in TRL: CE + alpha*T^2*JSD_beta(p_T, p_S)"
    options = (Option("gkd_beta", float, 0.5, "gkd-jsd: beta of the generalised JSD (GKD, as TRL defines it): beta*KL(p_T||M) + "
                      "(1-beta)*KL(p_S||M), M = beta*p_T + (1-beta)*p_S; 0 = KL(p_T||p_S), 1 = KL(p_S||p_T).",
                      low=0.0, high=1.0, search=("float", 0.1, 0.9)),)

    def divergence(self, student: torch.Tensor, teacher, mask: torch.Tensor | None, temperature: float) -> torch.Tensor:
        return generalized_jsd(student=student, teacher=teacher, beta=self.ctx.config.gkd_beta, mask=mask,
                               temperature=temperature)

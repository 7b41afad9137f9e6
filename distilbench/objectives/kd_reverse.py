"""Reverse KD: the KL taken the other way round, ``KL(p_S || p_T)``, MiniLLM's divergence at the token level."""
from __future__ import annotations

import torch

from .base import register_objective
from .distributions import reverse_kl
from .kd import DivergenceKD


@register_objective("kd-reverse", aliases=("reverse-kl",))
class KDReverse(DivergenceKD):
    """Reverse-KL distillation (Gu, Dong, Wei & Huang 2024, "MiniLLM: Knowledge Distillation of Large Language Models",
    ICLR 2024, Eq. 1 at the token level)::

        L = CE + alpha_kd * T^2 * 1/N sum_rows KL(p_S || p_T),   KL(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v))

    ``p = softmax(z / T)``; a row is an example's class distribution or, for a causal LM, the next-token distribution
    at one real (non-padded) position, N rows in all. The student's expectation: it pays where it puts mass the
    teacher does not (mode-seeking), where forward KL (``kd``) pays where it misses the teacher's mass.

    MiniLLM minimises the *sequence-level* reverse KL by policy gradient on sequences the student samples; this is
    its token-level form on the fixed training text (teacher forcing), what Agarwal et al. 2024 (GKD) call the
    supervised reverse KL: no student sampling. With a top-k teacher cache the divergence is taken on the top-k + 1
    buckets (:func:`.distributions.coarse_log_probs`), a lower bound of the exact one.
    """

    version = "1.0"
    paper = "Gu et al. 2024 (MiniLLM), token-level reverse KL: CE + alpha*T^2*KL(p_S||p_T)"

    def divergence(self, student: torch.Tensor, teacher, mask: torch.Tensor | None, temperature: float) -> torch.Tensor:
        return reverse_kl(student=student, teacher=teacher, mask=mask, temperature=temperature)

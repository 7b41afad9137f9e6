"""Att-MSE (paper 002 §3, "Attention and Value Transfer"; TinyBERT, Jiao et al. 2020):
``L_att = 1/h * sum_{i=1..h} MSE(A_i^S, A_i^T)`` on the pre-softmax attention scores, over real (query, key) pairs.
Conventions shared with att-kl and val-kl (padding, head counts): :mod:`distilbench.objectives.att_kl`."""
from __future__ import annotations

import torch

from .base import Needs, Outputs, register_objective
from .functional import check_aligned, masked_score_mse
from .layerwise import LayerObjective


@register_objective("att-mse")
class AttMSE(LayerObjective):
    """Att-MSE: mean squared error between the teacher's and the student's attention scores BEFORE softmax
    (paper 002 §3, "Attention and Value Transfer"; TinyBERT, Jiao et al. 2020).

    Paper 002: ``L_att = 1/h * sum_{i=1..h} MSE(A_i^S, A_i^T)`` with ``A_i in R^{l x l}`` head ``i``'s attention
    matrix before the softmax. Here ``A`` is the captured ``scores``: ``Q K^T / sqrt(d_h)`` (plus MPNet's relative
    position bias, which is part of its pre-softmax score), before the padding mask. Batched over real tokens only
    (``m`` the attention mask, ``n_b = sum_i m[b,i]``, ``P = sum_b n_b^2`` the batch's real (query, key) pairs)::

        I = sum_{(s,t) in layer_map} 1/(P * H) * sum_{(b,i,j): m[b,i]=1, m[b,j]=1} sum_{h=1..H} (A_S[b,h,i,j] - A_T[b,h,i,j])^2

    i.e. per pair, the sum of squared errors over the real (query, key) pairs and heads divided by (number of real
    pairs x heads): every real pair weighs the same, so longer examples weigh more; with no padding this is
    ``F.mse_loss`` over ``[B, H, L, L]``. Pairs with a padded query or key are excluded: they change neither the loss
    nor its gradient (unlike TinyBERT's code, which zeroes masked entries but keeps them in the mean).
    Heads: ``H_s == H_t`` per head; ``H_s != H_t``: each side's scores are averaged over its own heads,
    ``Abar = 1/H_X * sum_h A_X[h]``, and the averaged maps are compared (``H = 1``) -- never a broadcast.
    The teacher side is detached. Full loss (joint schedule): ``CE + alpha_kd * T^2 * KL(pred) + beta * I``.
    Shared conventions (padding, head counts): see :mod:`distilbench.objectives.att_kl`.
    """

    version = "1.0"
    paper = "Wang et al. 2023 §3 Att-MSE (TinyBERT, Jiao et al. 2020): 1/h sum_i MSE(A_i^S, A_i^T), pre-softmax scores, real pairs"
    needs = Needs(logits=True, attentions=True, token_aligned=True)

    def pair_loss(self, student: Outputs, teacher: Outputs, s: int, t: int, k: int, batch: dict) -> torch.Tensor:
        a_s, a_t, mask = student.attentions[s - 1]["scores"], teacher.attentions[t - 1]["scores"], batch["attention_mask"]
        check_aligned(self.name, student=a_s, teacher=a_t, mask=mask)
        return masked_score_mse(student=a_s, teacher=a_t, mask=mask,
                                causal=self.task.causal)

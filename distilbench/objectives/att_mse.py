from __future__ import annotations

import torch

from .att_kl import check_aligned
from .base import Needs, Outputs
from .layerwise import LayerObjective


def masked_score_mse(scores_s: torch.Tensor, scores_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real (query, key) pairs and the heads of the squared score error::

        1 / (P * H) * sum_{(b,i,j): m[b,i]=m[b,j]=1} sum_h (A_S[b,h,i,j] - A_T[b,h,i,j])^2,   P = sum_b n_b^2

    ``scores_*`` ``[B, H, L, L]``. With ``H_s != H_t`` each side is first averaged over its own heads
    (``Abar = 1/H * sum_h A[h]``) and ``H = 1``. Pairs with a padded query or key are dropped by indexing."""
    keep = mask.bool()
    pairs = keep[:, :, None] & keep[:, None, :]  # [B, L, L]
    s = scores_s.float().permute(0, 2, 3, 1)[pairs]  # [P, H_s]
    t = scores_t.float().permute(0, 2, 3, 1)[pairs]  # [P, H_t]
    if s.shape[0] == 0:
        return s.new_zeros(())
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    return (s - t).pow(2).mean()


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

    name = "att-mse"
    version = "1.0"
    paper = "Wang et al. 2023 §3 Att-MSE (TinyBERT, Jiao et al. 2020): 1/h sum_i MSE(A_i^S, A_i^T), pre-softmax scores, real pairs"
    needs = Needs(logits=True, attentions=True, token_aligned=True)

    def intermediate(self, student: Outputs, teacher: Outputs, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        total = student.logits.new_zeros((), dtype=torch.float32)
        for s, t in self.ctx.layer_map:
            a_s, a_t = student.attentions[s - 1]["scores"], teacher.attentions[t - 1]["scores"].detach()
            check_aligned(self.name, a_s, a_t, mask)
            total = total + masked_score_mse(a_s, a_t, mask)
        return total

"""Att-KL (paper 002 §3, "Attention and Value Transfer"; MiniLM, Wang et al. 2020), and the conventions shared by
the attention-transfer objectives att-mse, att-kl and val-kl.

Inputs: ``Outputs.attentions`` from :mod:`distilbench.models.capture`, one dict per layer with ``scores`` (pre-softmax,
pre-mask, scaled; MPNet's relative position bias included) ``[B, H, L, L]`` and ``v`` ``[B, H, L, d_h]``. Layer pairs
``(s, t)`` of ``ctx.layer_map`` are 1-based: student ``attentions[s - 1]`` against teacher ``attentions[t - 1]``; the
intermediate term is the SUM over the pairs of the per-pair losses (``LayerObjective.pair_loss``). Padding: real
query rows and keys only, as :mod:`distilbench.objectives.functional` describes. A causal-lm task's models attend only
to keys at or before the query, so att-mse and att-kl compare only those (``causal=True``); val-kl's value relations
are not an attention the model applies and keep every real key.

Head counts (``H_s`` student, ``H_t`` teacher) -- never a silent broadcast:

* att-mse, att-kl: ``H_s == H_t`` compares student head ``h`` with teacher head ``h``. ``H_s != H_t`` has no
  head-to-head correspondence, so each side is first averaged over its own heads (the scores for att-mse, the
  probabilities for att-kl) and the two averaged maps are compared (``H = 1`` in the formulas).
* val-kl: MiniLMv2 relation heads. Each side's values are concatenated over heads, ``[B, L, H * d_h]``, and re-split
  into ``R = H_t`` relation heads of size ``H * d_h / R`` (the teacher's own heads; for ``H_s == H_t`` this is exactly
  the per-head comparison). A student whose ``H_s * d_h`` is not divisible by ``R`` is refused with a UsageError.

The teacher's tensors are detached (a fixed target); all arithmetic is in float32 (captures may be bf16 under autocast).
"""
from __future__ import annotations

import torch

from .base import Needs, Outputs, register_objective
from .functional import check_aligned, masked_row_kl
from .layerwise import LayerObjective


@register_objective("att-kl")
class AttKL(LayerObjective):
    """Att-KL: KL divergence between the teacher's and the student's attention distributions (paper 002 §3,
    "Attention and Value Transfer"; MiniLM, Wang et al. 2020, self-attention distribution transfer).

    Paper 002: ``L_att = 1/(T H) * sum_{t=1..T} sum_{h=1..H} D_KL(a^T_{t,h} || a^S_{t,h})`` with ``a_{t,h}`` the
    post-softmax attention of query ``t`` in head ``h``, ``T`` the sequence length, ``H`` the heads. Batched, with the
    real tokens only (see the module docstring: ``m`` the attention mask, ``N = sum_{b,i} m[b,i]`` real queries)::

        I = sum_{(s,t) in layer_map} 1/(N * H) * sum_{(b,i): m[b,i]=1} sum_h sum_{j: m[b,j]=1}
                a_T[b,h,i,j] * (log a_T[b,h,i,j] - log a_S[b,h,i,j])
        a_X[b,h,i,:] = softmax over the real keys j of scores_X[b,h,i,j]

    i.e. per pair, the mean over the batch's real query rows (each real row weighs the same) and heads of the row KL.
    ``a`` is rebuilt from the captured pre-softmax ``scores`` with a log-softmax over the real keys, which is exactly
    the captured ``probs`` (softmax after the padding mask) but gives exact log-probabilities: padded keys have
    probability 0 on both sides and contribute nothing (no ``0 * log 0``). Padded queries are excluded.
    Heads: ``H_s == H_t`` per head; ``H_s != H_t``: ``a_X`` is replaced by its head average
    ``1/H_X * sum_h a_X[b,h,i,:]`` on each side and ``H = 1`` -- never a broadcast. The teacher side is detached.
    Full loss (joint schedule): ``CE + alpha_kd * T^2 * KL(pred) + beta * I`` (see ``layerwise``).
    """

    version = "1.0"
    paper = "Wang et al. 2023 §3 Att-KL (MiniLM, Wang et al. 2020): 1/(TH) sum_t sum_h KL(a^T_{t,h} || a^S_{t,h}) over real queries"
    needs = Needs(logits=True, attentions=True, token_aligned=True)

    def pair_loss(self, student: Outputs, teacher: Outputs, s: int, t: int, k: int, batch: dict) -> torch.Tensor:
        x_s, x_t, mask = student.attentions[s - 1]["scores"], teacher.attentions[t - 1]["scores"], batch["attention_mask"]
        check_aligned(self.name, student=x_s, teacher=x_t, mask=mask)
        return masked_row_kl(student=x_s, teacher=x_t, mask=mask, average_heads=x_s.shape[1] != x_t.shape[1],
                             causal=self.task.causal)

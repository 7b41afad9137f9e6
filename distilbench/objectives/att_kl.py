"""Att-KL, and the conventions shared by the attention-transfer objectives att-mse, att-kl and val-kl
(paper 002 §3, "Attention and Value Transfer").

Inputs: ``Outputs.attentions`` from :mod:`distilbench.capture`, one dict per layer with ``scores`` (pre-softmax,
pre-mask, scaled; MPNet's relative position bias included) ``[B, H, L, L]`` and ``v`` ``[B, H, L, d_h]``. Layer pairs
``(s, t)`` of ``ctx.layer_map`` are 1-based: student ``attentions[s - 1]`` against teacher ``attentions[t - 1]``; the
intermediate term is the SUM over the pairs of the per-pair losses below.

Padding. ``m[b, i] = batch["attention_mask"][b, i]`` (1 = real token), ``n_b = sum_i m[b, i]``. A query row ``i``
counts only where ``m[b, i] = 1``, a key ``j`` only where ``m[b, j] = 1``. Padded query rows and keys are overwritten
(``torch.where``) before any arithmetic and carry weight 0, so whatever a padded position holds (even inf or NaN)
changes neither the loss nor any gradient.

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

import math

import torch

from ..errors import UsageError
from .base import Needs, Outputs
from .layerwise import LayerObjective


def check_aligned(name: str, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> None:
    """``student`` / ``teacher`` are ``[B, H, L, *]``; both must cover the ``[B, L]`` positions of ``mask``."""
    bs, ls = student.shape[0], student.shape[2]
    bt, lt = teacher.shape[0], teacher.shape[2]
    if (bs, ls) != (bt, lt) or (bs, ls) != tuple(mask.shape):
        raise UsageError(f"{name} compares token positions: student [B, L] = {(bs, ls)}, teacher {(bt, lt)} and attention "
                         f"mask {tuple(mask.shape)} must agree (teacher and student must share a tokenizer)")


def masked_log_softmax(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``log softmax`` over the real keys of each row of ``x`` ``[B, H, L, L]`` (``real`` broadcastable to it, True =
    a real query row and key). Masked positions are overwritten first (``torch.where``: 2x masked_fill's speed), so
    whatever they hold, the result is finite there (``dtype-min - logsumexp``, or ``-log L`` on a padded row); the
    caller weights those entries by 0."""
    return torch.log_softmax(torch.where(real, x, torch.finfo(x.dtype).min), dim=-1)


def head_mean(logp: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``log`` of the head-averaged probabilities, ``logsumexp_h log p - log H`` ``[B, 1, L, L]``; 0 where masked."""
    return torch.where(real, torch.logsumexp(logp, 1, keepdim=True) - math.log(logp.shape[1]), 0.0)


def masked_row_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor,
                  average_heads: bool = False) -> torch.Tensor:
    """Mean over real query rows and heads of ``KL(softmax_T || softmax_S)`` taken over the real keys::

        1 / (N * H) * sum_{(b,i): m[b,i]=1} sum_h sum_{j: m[b,j]=1} p_T[b,h,i,j] * (log p_T[b,h,i,j] - log p_S[b,h,i,j])
        p_X[b,h,i,:] = softmax over the real keys j of x_X[b,h,i,j],  N = sum_{b,i} m[b,i]

    ``teacher_logits`` / ``student_logits`` are pre-softmax maps ``[B, H, L, L]`` with the same ``H``, or with any
    ``H_t``, ``H_s`` when ``average_heads``: then ``p_X`` is replaced by its mean over the heads,
    ``pbar_X = 1/H_X * sum_h p_X[h]`` (computed in log space: ``logsumexp_h log p_X - log H_X``) and ``H = 1``.

    Computed on the whole padded maps (length-grouped batches carry little padding, and gathering the real rows cost
    more than the rows it skipped): the teacher's side, a fixed target, without autograd; its weights ``p_T`` are 0 on
    padded rows and keys, where both sides' log-probabilities are finite (:func:`masked_log_softmax`), so those terms
    are exactly 0."""
    keep = mask.bool()
    real = keep[:, None, :, None] & keep[:, None, None, :]  # [B, 1, L, L]: real query row and real key
    n = int(keep.sum())
    if n == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    with torch.no_grad():
        logp_t = masked_log_softmax(teacher_logits.detach().float(), real)
        if average_heads:
            logp_t = head_mean(logp_t, real)
        weight = torch.where(real, logp_t.exp(), 0.0)  # p_T on real (row, key) pairs, else 0
    logp_s = masked_log_softmax(student_logits.float(), real)
    if average_heads:
        logp_s = head_mean(logp_s, real)
    elif logp_t.shape[1] != logp_s.shape[1]:
        raise ValueError(f"per-head KL needs as many teacher as student heads (got {logp_t.shape[1]} and {logp_s.shape[1]})")
    return (weight * (logp_t - logp_s)).sum() / (n * logp_t.shape[1])


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

    name = "att-kl"
    version = "1.0"
    paper = "Wang et al. 2023 §3 Att-KL (MiniLM, Wang et al. 2020): 1/(TH) sum_t sum_h KL(a^T_{t,h} || a^S_{t,h}) over real queries"
    needs = Needs(logits=True, attentions=True, token_aligned=True)

    def intermediate(self, student: Outputs, teacher: Outputs, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        total = student.logits.new_zeros((), dtype=torch.float32)
        for s, t in self.ctx.layer_map:
            x_s, x_t = student.attentions[s - 1]["scores"], teacher.attentions[t - 1]["scores"].detach()
            check_aligned(self.name, x_s, x_t, mask)
            total = total + masked_row_kl(x_t, x_s, mask, average_heads=x_s.shape[1] != x_t.shape[1])
        return total

"""Att-KL, and the conventions shared by the attention-transfer objectives att-mse, att-kl and val-kl
(paper 002 §3, "Attention and Value Transfer").

Inputs: ``Outputs.attentions`` from :mod:`distilbench.capture`, one dict per layer with ``scores`` (pre-softmax,
pre-mask, scaled; MPNet's relative position bias included) ``[B, H, L, L]`` and ``v`` ``[B, H, L, d_h]``. Layer pairs
``(s, t)`` of ``ctx.layer_map`` are 1-based: student ``attentions[s - 1]`` against teacher ``attentions[t - 1]``; the
intermediate term is the SUM over the pairs of the per-pair losses below.

Padding. ``m[b, i] = batch["attention_mask"][b, i]`` (1 = real token), ``n_b = sum_i m[b, i]``. A query row ``i``
counts only where ``m[b, i] = 1``, a key ``j`` only where ``m[b, j] = 1``. Padded query rows are dropped by indexing
and padded keys are overwritten (``masked_fill``) before any arithmetic, so whatever a padded position holds (even inf
or NaN) changes neither the loss nor any gradient.

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


def query_rows(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the real queries of ``x`` ``[B, H, L, L]``: ``[N, H, L]`` with ``N = sum m``, and each row's key mask
    ``[N, L]`` (``keys[r] = m[b]`` for the row ``r = (b, i)``)."""
    keep = mask.bool()
    rows = x.transpose(1, 2)[keep]  # [N, H, L]
    keys = keep.unsqueeze(1).expand(-1, keep.shape[1], -1)[keep]  # [N, L]
    return rows, keys


def masked_log_softmax(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``log softmax`` over the real keys of each row (``rows`` ``[N, H, L]``); 0 at padded keys (their probability is
    0 and every term that uses them is dropped), so no ``0 * log 0`` and no inf can appear."""
    keys = keys[:, None, :]
    logp = torch.log_softmax(rows.masked_fill(~keys, torch.finfo(rows.dtype).min), dim=-1)
    return logp.masked_fill(~keys, 0.0)


def masked_row_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor,
                  average_heads: bool = False) -> torch.Tensor:
    """Mean over real query rows and heads of ``KL(softmax_T || softmax_S)`` taken over the real keys::

        1 / (N * H) * sum_{(b,i): m[b,i]=1} sum_h sum_{j: m[b,j]=1} p_T[b,h,i,j] * (log p_T[b,h,i,j] - log p_S[b,h,i,j])
        p_X[b,h,i,:] = softmax over the real keys j of x_X[b,h,i,j],  N = sum_{b,i} m[b,i]

    ``teacher_logits`` / ``student_logits`` are pre-softmax maps ``[B, H, L, L]`` with the same ``H``, or with any
    ``H_t``, ``H_s`` when ``average_heads``: then ``p_X`` is replaced by its mean over the heads,
    ``pbar_X = 1/H_X * sum_h p_X[h]`` (computed in log space: ``logsumexp_h log p_X - log H_X``) and ``H = 1``."""
    rows_t, keys = query_rows(teacher_logits.float(), mask)
    rows_s, _ = query_rows(student_logits.float(), mask)
    if rows_s.shape[0] == 0:
        return rows_s.new_zeros(())
    logp_t, logp_s = masked_log_softmax(rows_t, keys), masked_log_softmax(rows_s, keys)
    if average_heads:
        k = keys[:, None, :]  # padded keys hold 0 on every head: finite, and reset to 0 after the average
        logp_t = (torch.logsumexp(logp_t, 1, keepdim=True) - math.log(logp_t.shape[1])).masked_fill(~k, 0.0)
        logp_s = (torch.logsumexp(logp_s, 1, keepdim=True) - math.log(logp_s.shape[1])).masked_fill(~k, 0.0)
    elif logp_t.shape[1] != logp_s.shape[1]:
        raise ValueError(f"per-head KL needs as many teacher as student heads (got {logp_t.shape[1]} and {logp_s.shape[1]})")
    kl = (logp_t.exp().masked_fill(~keys[:, None, :], 0.0) * (logp_t - logp_s)).sum(-1)  # [N, H]
    return kl.mean()


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
    paper = "paper 002 §3 Att-KL (MiniLM, Wang et al. 2020): 1/(TH) sum_t sum_h KL(a^T_{t,h} || a^S_{t,h}) over real queries"
    needs = Needs(logits=True, attentions=True, token_aligned=True)

    def intermediate(self, student: Outputs, teacher: Outputs, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        total = student.logits.new_zeros((), dtype=torch.float32)
        for s, t in self.ctx.layer_map:
            x_s, x_t = student.attentions[s - 1]["scores"], teacher.attentions[t - 1]["scores"].detach()
            check_aligned(self.name, x_s, x_t, mask)
            total = total + masked_row_kl(x_t, x_s, mask, average_heads=x_s.shape[1] != x_t.shape[1])
        return total

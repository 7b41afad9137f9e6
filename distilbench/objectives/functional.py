"""The masked losses the layer objectives share, as plain functions.

Every loss takes keyword-only ``student=`` and ``teacher=`` (and ``mask=``): the KL terms are not symmetric, and a
positional ``f(teacher, student)`` read the other way round would silently compute ``KL(S || T)``. The teacher's
side is a fixed target: it is detached (and, where it costs a pass, computed without autograd). All arithmetic is in
float32, since captures may be bf16 under autocast.

Padding (paper 002 §3 compares real tokens only): ``m[b, i] = mask[b, i]`` (1 = real token). A query row ``i`` counts
only where ``m[b, i] = 1``, a key ``j`` only where ``m[b, j] = 1``. Padded positions are either dropped by indexing
or overwritten (``torch.where``) before any arithmetic and weighted 0, so whatever they hold (even inf or NaN) changes
neither a loss nor any gradient.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UsageError


def check_aligned(name: str, *, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> None:
    """``student`` / ``teacher`` are ``[B, H, L, *]``; both must cover the ``[B, L]`` positions of ``mask``."""
    bs, ls = student.shape[0], student.shape[2]
    bt, lt = teacher.shape[0], teacher.shape[2]
    if (bs, ls) != (bt, lt) or (bs, ls) != tuple(mask.shape):
        raise UsageError(f"{name} compares token positions: student [B, L] = {(bs, ls)}, teacher {(bt, lt)} and attention "
                         f"mask {tuple(mask.shape)} must agree (teacher and student must share a tokenizer)")


def masked_mse(*, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens of the squared error averaged over the hidden dimension (hid-seq, lwd, ted)::

        1/N * sum_{(b,i): m[b,i]=1} 1/d * sum_j (student[b,i,j] - teacher[b,i,j])^2,   N = sum_{b,i} m[b,i]

    ``student`` (already projected) and ``teacher`` are ``[B, L, d]``; padded positions are dropped by indexing."""
    if student.shape[:2] != teacher.shape[:2] or student.shape[:2] != mask.shape:
        raise ValueError(f"token-aligned hidden-state loss needs student {tuple(student.shape[:2])}, teacher "
                         f"{tuple(teacher.shape[:2])} and attention mask {tuple(mask.shape)} to cover the same [B, L] "
                         "positions (teacher and student must share a tokenizer)")
    keep = mask.bool()
    if not keep.any():
        return student.new_zeros((), dtype=torch.float32)
    diff = student[keep].float() - teacher.detach()[keep].float()  # [N, d]
    return diff.pow(2).mean()


def causal_pairs(length: int, device) -> torch.Tensor:
    """``[L, L]``: True where key ``j`` is at or before query ``i`` (``j <= i``), the keys a causal LM attends to."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def masked_score_mse(*, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                     causal: bool = False) -> torch.Tensor:
    """Mean over the real (query, key) pairs and the heads of the squared score error (att-mse)::

        1 / (P * H) * sum_{(b,i,j): m[b,i]=m[b,j]=1} sum_h (A_S[b,h,i,j] - A_T[b,h,i,j])^2,   P = sum_b n_b^2

    ``student`` / ``teacher`` ``[B, H, L, L]``. With ``H_s != H_t`` each side is first averaged over its own heads
    (``Abar = 1/H * sum_h A[h]``) and ``H = 1``: never a broadcast. Pairs with a padded query or key are dropped;
    ``causal`` (a causal LM) also drops the pairs with a later key (``j > i``), which its attention masks out
    (then ``P`` counts the pairs ``j <= i``)."""
    keep = mask.bool()
    pairs = keep[:, :, None] & keep[:, None, :]  # [B, L, L]
    if causal:
        pairs = pairs & causal_pairs(keep.shape[1], keep.device)
    s = student.float().permute(0, 2, 3, 1)[pairs]  # [P, H_s]
    t = teacher.detach().float().permute(0, 2, 3, 1)[pairs]  # [P, H_t]
    if s.shape[0] == 0:
        return s.new_zeros(())
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    return (s - t).pow(2).mean()


def masked_log_softmax(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``log softmax`` over the real keys of each row of ``x`` ``[B, H, L, L]`` (``real`` broadcastable to it, True =
    a real query row and key). Masked positions are overwritten first (``torch.where``: 2x masked_fill's speed), so
    whatever they hold, the result is finite there (``dtype-min - logsumexp``, or ``-log L`` on a padded row); the
    caller weights those entries by 0."""
    return torch.log_softmax(torch.where(real, x, torch.finfo(x.dtype).min), dim=-1)


def head_mean(logp: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``log`` of the head-averaged probabilities, ``logsumexp_h log p - log H`` ``[B, 1, L, L]``; 0 where masked."""
    return torch.where(real, torch.logsumexp(logp, 1, keepdim=True) - math.log(logp.shape[1]), 0.0)


def masked_row_kl(*, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                  average_heads: bool = False, causal: bool = False) -> torch.Tensor:
    """Mean over real query rows and heads of ``KL(softmax_T || softmax_S)`` taken over the real keys (att-kl, val-kl)::

        1 / (N * H) * sum_{(b,i): m[b,i]=1} sum_h sum_{j: m[b,j]=1} p_T[b,h,i,j] * (log p_T[b,h,i,j] - log p_S[b,h,i,j])
        p_X[b,h,i,:] = softmax over the real keys j of x_X[b,h,i,j],  N = sum_{b,i} m[b,i]

    ``student`` / ``teacher`` are pre-softmax maps ``[B, H, L, L]`` with the same ``H``, or with any ``H_s``, ``H_t``
    when ``average_heads``: then ``p_X`` is replaced by its mean over the heads, ``pbar_X = 1/H_X * sum_h p_X[h]``
    (computed in log space: ``logsumexp_h log p_X - log H_X``) and ``H = 1``.

    Computed on the whole padded maps (length-grouped batches carry little padding, and gathering the real rows cost
    more than the rows it skipped): the teacher's side, a fixed target, without autograd; its weights ``p_T`` are 0 on
    padded rows and keys, where both sides' log-probabilities are finite (:func:`masked_log_softmax`), so those terms
    are exactly 0. ``causal`` (a causal LM's attention): a row's real keys are only those at or before its query
    (``j <= i``), the keys its softmax runs over."""
    keep = mask.bool()
    real = keep[:, None, :, None] & keep[:, None, None, :]  # [B, 1, L, L]: real query row and real key
    if causal:
        real = real & causal_pairs(keep.shape[1], keep.device)
    n = int(keep.sum())
    if n == 0:
        return student.new_zeros((), dtype=torch.float32)
    with torch.no_grad():
        logp_t = masked_log_softmax(teacher.detach().float(), real)
        if average_heads:
            logp_t = head_mean(logp_t, real)
        weight = torch.where(real, logp_t.exp(), 0.0)  # p_T on real (row, key) pairs, else 0
    logp_s = masked_log_softmax(student.float(), real)
    if average_heads:
        logp_s = head_mean(logp_s, real)
    elif logp_t.shape[1] != logp_s.shape[1]:
        raise ValueError(f"per-head KL needs as many teacher as student heads (got {logp_t.shape[1]} and {logp_s.shape[1]})")
    return (weight * (logp_t - logp_s)).sum() / (n * logp_t.shape[1])


def logit_kl(*, student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(z_T / T) || softmax(z_S / T))`` over the last dimension, averaged over the batch (Hinton et al.
    2015, without the ``T^2`` scale, which the caller applies). Inputs are cast to float32; the teacher is detached."""
    zs, zt = student.float(), teacher.detach().float()
    return F.kl_div(F.log_softmax(zs / temperature, -1), F.log_softmax(zt / temperature, -1),
                    reduction="batchmean", log_target=True)


def span_kl(*, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Extractive QA: KL between the teacher's and the student's start distributions, and between their end
    distributions, averaged over the two and over the windows (without the ``T^2`` scale, which the caller applies)::

        1/2 * 1/B * sum_b sum_{x in start, end} KL(softmax(z_T[b, :, x] / T) || softmax(z_S[b, :, x] / T))

    ``student`` / ``teacher`` are ``[B, L, 2]`` (start scores, end scores per token); each softmax runs over the window's
    real tokens (``mask[b, i] = 1``), so a window's loss does not depend on how far its batch pads it."""
    if student.shape != teacher.shape or student.shape[:2] != mask.shape:
        raise UsageError(f"span KD compares token positions: student {tuple(student.shape)}, teacher {tuple(teacher.shape)} "
                         f"and attention mask {tuple(mask.shape)} must agree (teacher and student must share a tokenizer)")
    real = mask.bool()[:, :, None]  # [B, L, 1]; padded positions overwritten before the softmax, then weighted 0
    low = torch.finfo(torch.float32).min
    with torch.no_grad():
        logp_t = torch.log_softmax(torch.where(real, teacher.detach().float() / temperature, low), dim=1)
        weight = torch.where(real, logp_t.exp(), 0.0)
    logp_s = torch.log_softmax(torch.where(real, student.float() / temperature, low), dim=1)
    return (weight * (logp_t - logp_s)).sum() / (2 * student.shape[0])

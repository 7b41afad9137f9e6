"""Divergences between predicted distributions, over classes (``[B, C]``) or next tokens (``[B, L, V]``), and the
top-k teacher that stands in for full token logits where the vocabulary is large.

A "row" is one predicted distribution: an example's class distribution, or the next-token distribution at one token
position. Token logits carry a ``[B, L]`` mask (1 = a real token); only real positions are rows. They are selected by
indexing before any arithmetic, so whatever a padded position holds (even inf or NaN) changes neither a loss nor a
gradient. Every divergence here is the **mean over the rows** of a per-row divergence at temperature ``T``
(``p = softmax(z / T)``), in float32; the teacher's side is detached. Arguments are keyword-only (``student=``,
``teacher=``), as in :mod:`.functional`: the divergences are not symmetric.

``teacher`` is either logits with the student's shape or a :class:`TopKTeacher` (the teacher-output cache's top-k
form): then both distributions are compared on the k + 1 buckets "each of the teacher's top-k tokens" and "every
other token" (:func:`coarse_log_probs`); what that does to each divergence is stated there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TopKTeacher:
    """The teacher's next-token distributions, kept at its top-k tokens plus the mass of all the others.

    ``indices`` ``[..., k]``: the k most probable tokens, most probable first; ``log_probs`` ``[..., k]``: their
    log-probabilities ``log softmax(z / T)`` over the **full** vocabulary (the top-k logits ``z / T`` less the full
    log-partition, so they carry the normaliser the top-k alone lose); ``log_rest`` ``[...]``: the log of the
    probability mass of the other ``V - k`` tokens (``-inf`` when ``k = V``), computed from the full logits (not as
    ``1 - sum``, which loses the small tails to rounding); ``temperature``: the ``T`` of both. The rest mass depends on
    ``T``, so a top-k teacher serves only divergences at its own temperature."""

    indices: torch.Tensor
    log_probs: torch.Tensor
    log_rest: torch.Tensor
    temperature: float

    @property
    def k(self) -> int:
        return self.indices.shape[-1]

    def rows(self, keep: torch.Tensor | None) -> "TopKTeacher":
        """The rows at the True positions of ``keep`` (all rows, flattened, when None)."""
        if keep is None:
            k = self.k
            return TopKTeacher(self.indices.reshape(-1, k), self.log_probs.reshape(-1, k), self.log_rest.reshape(-1),
                               self.temperature)
        return TopKTeacher(self.indices[keep], self.log_probs[keep], self.log_rest[keep], self.temperature)


def topk_teacher(logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopKTeacher:
    """The top-k form of teacher logits ``[..., V]`` at ``temperature`` (computed without autograd, in float32)."""
    vocab = logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"top-k teacher needs 1 <= k <= vocabulary size {vocab} (got k={k})")
    with torch.no_grad():
        logp = F.log_softmax(logits.detach().float() / temperature, dim=-1)
        top, idx = logp.topk(k, dim=-1)
        rest = logp.scatter(-1, idx, -math.inf).logsumexp(-1)  # -inf when k = V
    return TopKTeacher(idx, top, rest, float(temperature))


def coarse_log_probs(student_logits: torch.Tensor, teacher: TopKTeacher,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions on the k + 1 buckets of the teacher's top-k: ``(log q, log p)``, each ``[N, k + 1]``.

    ``p = (p_T(i_1), ..., p_T(i_k), r_T)`` with ``r_T`` the teacher's rest mass; ``q`` the student's probabilities at
    the same tokens and its own rest mass ``r_S = 1 - sum_j q_S(i_j)`` (a logsumexp over the other tokens, so it is
    exact and differentiable). ``student_logits`` ``[N, V]`` and ``teacher`` (N rows) are already the real rows.

    **What this does to a divergence.** Grouping tokens into buckets can only lose information, so for every
    f-divergence (forward KL, reverse KL, the generalised JSD) the divergence of the bucketed distributions is a
    **lower bound** of the exact one (data-processing inequality). For the forward KL the gap is exact (the chain rule
    of KL)::

        KL(p_T || q_S) = KL_topk + r_T * KL(pt_T || qt_S),    pt, qt = the tail distributions (other tokens, renormalised)

    so the top-k KL is exact when the teacher's tail is shaped like the student's, and it drops the teacher's
    preferences among its tail tokens: an error of at most :func:`topk_kl_error_bound` per row, which vanishes as
    ``r_T -> 0`` (a peaked teacher, or a larger k). Its gradient is the exact KL's with the teacher's unknown tail
    filled in by the student's own shape, ``p_T(j) := r_T * q_S(j) / r_S`` for each tail token j: the student is taught
    the tail's total mass, not how to spread it."""
    if teacher.temperature != temperature:
        raise ValueError(f"a top-k teacher computed at temperature {teacher.temperature} cannot serve a divergence at "
                         f"temperature {temperature}: its rest mass depends on T (rebuild the cache at this T)")
    logq = F.log_softmax(student_logits.float() / temperature, dim=-1)
    idx = teacher.indices.long()  # a cache may hold them narrower
    q_top = logq.gather(-1, idx)
    q_rest = logq.scatter(-1, idx, -math.inf).logsumexp(-1, keepdim=True)
    p = torch.cat([teacher.log_probs.detach().float(), teacher.log_rest.detach().float()[:, None]], dim=-1)
    return torch.cat([q_top, q_rest], dim=-1), p


def topk_kl_error_bound(*, student: torch.Tensor, teacher: TopKTeacher, mask: torch.Tensor | None = None,
                        temperature: float = 1.0) -> torch.Tensor:
    """An upper bound, per real row ``[N]``, on ``exact KL - top-k KL`` = ``r_T * KL(pt_T || qt_S)`` (see
    :func:`coarse_log_probs`), from what the top-k teacher holds and the student. Each tail token has teacher
    probability at most ``p_k`` (the k-th largest), so ``pt_T <= min(1, p_k / r_T)`` and::

        0 <= exact - top-k <= r_T * (log min(1, p_k / r_T) - min_{j in tail} log qt_S(j))

    (0 when ``k = V``). The lower bound 0 holds for every row."""
    s, t = _rows(student, mask), teacher.rows(None if mask is None else mask.bool())
    logq, idx = F.log_softmax(s.detach().float() / temperature, dim=-1), t.indices.long()
    tail_q = logq.scatter(-1, idx, math.inf)  # +inf marks the top-k: never the tail's minimum
    log_rest_s = logq.scatter(-1, idx, -math.inf).logsumexp(-1)
    min_tail = tail_q.min(-1).values - log_rest_s  # min_j log qt_S(j)
    r = t.log_rest.float()
    peak = torch.clamp(t.log_probs[:, -1].float() - r, max=0.0)  # log min(1, p_k / r_T)
    bound = r.exp() * (peak - min_tail)
    return torch.where(torch.isfinite(r), bound, 0.0)


# ------------------------------------------------------------------------------------------------ per-row divergences


def kl_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` per row ``[N]``, from log-probabilities; terms with ``p_v = 0``
    are 0 (and pass no NaN gradient)."""
    p = logp.exp()
    diff = torch.where(p > 0, logp - logq, 0.0)
    return (p * diff).sum(-1)


def generalized_jsd_rows(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    """The generalised JSD per row ``[N]``, as TRL's ``GKDTrainer.generalized_jsd_loss`` defines it:
    ``beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)`` with ``M = beta * p_T + (1 - beta) * p_S``, and at the end
    points ``beta = 0``: ``KL(p_T || p_S)``, ``beta = 1``: ``KL(p_S || p_T)``."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"the generalised JSD needs 0 <= beta <= 1 (got {beta})")
    if beta == 0.0:
        return kl_rows(logp_t, logp_s)
    if beta == 1.0:
        return kl_rows(logp_s, logp_t)
    log_m = torch.logsumexp(torch.stack([logp_t + math.log(beta), logp_s + math.log(1.0 - beta)]), dim=0)
    return beta * kl_rows(logp_t, log_m) + (1.0 - beta) * kl_rows(logp_s, log_m)


# ------------------------------------------------------------------------------------------------ the means over rows


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    if tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"a token mask {tuple(mask.shape)} must cover the logits' positions {tuple(x.shape[:-1])} "
                         "(teacher and student must share a tokenizer)")
    return x[mask.bool()]


def log_prob_rows(*, student: torch.Tensor, teacher: torch.Tensor | TopKTeacher, mask: torch.Tensor | None,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p_S, log p_T)`` on the real rows ``[N, V]`` (or ``[N, k + 1]`` for a top-k teacher); teacher detached."""
    s = _rows(student, mask)
    if isinstance(teacher, TopKTeacher):
        return coarse_log_probs(s, teacher.rows(None if mask is None else mask.bool()), temperature)
    if teacher.shape != student.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} must have "
                         "one shape (the same classes, or the same tokenizer and positions)")
    t = _rows(teacher.detach(), mask)
    return F.log_softmax(s.float() / temperature, -1), F.log_softmax(t.float() / temperature, -1)


def _mean(per_row: torch.Tensor) -> torch.Tensor:
    return per_row.mean() if per_row.numel() else per_row.new_zeros(())


def forward_kl(*, student: torch.Tensor, teacher: torch.Tensor | TopKTeacher, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """``1/N sum_rows KL(p_T || p_S)`` (Hinton et al.'s KD term, without the ``T^2``). On ``[B, C]`` logits without
    a mask it equals :func:`.functional.logit_kl`."""
    logp_s, logp_t = log_prob_rows(student=student, teacher=teacher, mask=mask, temperature=temperature)
    return _mean(kl_rows(logp_t, logp_s))


def reverse_kl(*, student: torch.Tensor, teacher: torch.Tensor | TopKTeacher, mask: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """``1/N sum_rows KL(p_S || p_T)``: the student's expectation of ``log p_S - log p_T`` (mode-seeking)."""
    logp_s, logp_t = log_prob_rows(student=student, teacher=teacher, mask=mask, temperature=temperature)
    return _mean(kl_rows(logp_s, logp_t))


def generalized_jsd(*, student: torch.Tensor, teacher: torch.Tensor | TopKTeacher, beta: float = 0.5,
                    mask: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
    """``1/N sum_rows JSD_beta(p_T, p_S)`` (:func:`generalized_jsd_rows`)."""
    logp_s, logp_t = log_prob_rows(student=student, teacher=teacher, mask=mask, temperature=temperature)
    return _mean(generalized_jsd_rows(logp_s, logp_t, beta))


def token_mask(logits: torch.Tensor, batch: dict) -> torch.Tensor | None:
    """The batch's attention mask when ``logits`` are token logits ``[B, L, V]`` (rows = real positions); None for
    class logits ``[B, C]`` (rows = examples: the attention mask is about tokens, not examples)."""
    return batch.get("attention_mask") if logits.dim() == 3 else None

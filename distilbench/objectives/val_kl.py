"""Val-KL: value-relation transfer (MiniLM, Wang et al. 2020; paper 002 §3 "Val-KL"):
``L_VR = 1/(A_h |x|) sum_a sum_t KL(VR^T_{a,t} || VR^S_{a,t})``, ``VR = softmax(V V^T / sqrt(d_k))``, over real
tokens, in MiniLMv2's relation heads when the head counts differ. Conventions shared with att-mse and att-kl:
:mod:`distilbench.objectives.att_kl`."""
from __future__ import annotations

import math

import torch

from ..errors import UsageError
from .base import Context, Needs, Outputs, register_objective
from .functional import check_aligned, masked_row_kl
from .layerwise import LayerObjective


def relation_heads(v: torch.Tensor, mask: torch.Tensor, heads: int, who: str) -> torch.Tensor:
    """MiniLMv2 relation heads: ``v`` ``[B, H, L, d_h]`` concatenated over heads to ``[B, L, H * d_h]`` and re-split
    into ``heads`` heads ``[B, R, L, H * d_h / R]``. Padded tokens' values are zeroed first (``torch.where``), so
    whatever they hold reaches no gradient of a real token."""
    b, h, n, d = v.shape
    if (h * d) % heads:
        raise UsageError(f"val-kl: the {who}'s values ({h} heads x {d} = {h * d}) cannot be split into {heads} relation "
                         f"heads (the teacher's head count); use a student whose hidden size is divisible by {heads}")
    v = torch.where(mask.bool()[:, None, :, None], v.float(), 0.0)
    if heads == h:  # the model's own heads: re-splitting would copy the same numbers
        return v
    return v.transpose(1, 2).reshape(b, n, heads, h * d // heads).transpose(1, 2)


def value_relation(v: torch.Tensor) -> torch.Tensor:
    """``V V^T / sqrt(d_r)`` per (relation) head: ``[B, R, L, L]`` pre-softmax value-relation logits."""
    return torch.matmul(v, v.transpose(-1, -2)) / math.sqrt(v.shape[-1])


@register_objective("val-kl")
class ValKL(LayerObjective):
    """Val-KL: value-relation transfer (MiniLM, Wang et al. 2020, "value-relation transfer"; named Val-KL in paper 002
    §3, "Attention and Value Transfer", which refers to MiniLM for the details).

    MiniLM: ``VR = softmax(V V^T / sqrt(d_k))`` per head, ``L_VR = 1/(A_h |x|) * sum_{a=1..A_h} sum_{t=1..|x|}
    D_KL(VR^T_{a,t} || VR^S_{a,t})``, each model with its own head size. Batched over real tokens (``m`` the attention
    mask, ``N = sum_{b,i} m[b,i]`` real queries, ``R`` heads)::

        I = sum_{(s,t) in layer_map} 1/(N * R) * sum_{(b,i): m[b,i]=1} sum_{r=1..R} sum_{j: m[b,j]=1}
                VR_T[b,r,i,j] * (log VR_T[b,r,i,j] - log VR_S[b,r,i,j])
        VR_X[b,r,i,:] = softmax over the real keys j of  <V_X[b,r,i], V_X[b,r,j]> / sqrt(d_r,X)

    Padded keys are masked out of the softmax (probability 0, no term), padded queries are excluded from the average.
    Heads (MiniLMv2, Wang et al. 2021, relation heads): each side's values are concatenated over its heads,
    ``[B, L, H_X * d_h,X]``, and re-split into ``R = H_t`` (teacher heads) relation heads of size
    ``d_r,X = H_X * d_h,X / R``. With ``H_s == H_t`` this is exactly MiniLM's per-head value relation; with
    ``H_s != H_t`` the student's ``H_s * d_h,s`` (its hidden size) must be divisible by ``R``, else a UsageError.
    The teacher side is detached. Full loss (joint schedule): ``CE + alpha_kd * T^2 * KL(pred) + beta * I``.
    Shared conventions (padding, head counts): see :mod:`distilbench.objectives.att_kl`.
    """

    version = "1.0"
    paper = "MiniLM (Wang et al. 2020) value relation, Wang et al. 2023 §3 Val-KL: KL(softmax(V_T V_T^T/sqrt d) || softmax(V_S V_S^T/sqrt d))"
    needs = Needs(logits=True, attentions=True, token_aligned=True)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        hs, ht = ctx.student_heads, ctx.teacher_heads
        if hs is not None and ht is not None and hs != ht and ctx.student_hidden % ht:
            raise UsageError(f"val-kl: student ({hs} heads, hidden size {ctx.student_hidden}) and teacher ({ht} heads) differ "
                             f"in head count, so values are compared in {ht} relation heads (MiniLMv2), which needs the "
                             f"student's hidden size to be divisible by {ht}")

    def pair_loss(self, student: Outputs, teacher: Outputs, s: int, t: int, k: int, batch: dict) -> torch.Tensor:
        v_s, v_t, mask = student.attentions[s - 1]["v"], teacher.attentions[t - 1]["v"].detach(), batch["attention_mask"]
        check_aligned(self.name, student=v_s, teacher=v_t, mask=mask)
        r = v_t.shape[1]  # the teacher's heads are the relation heads (MiniLMv2)
        rel_s = value_relation(relation_heads(v_s, mask, r, "student"))
        rel_t = value_relation(relation_heads(v_t, mask, r, "teacher"))
        return masked_row_kl(student=rel_s, teacher=rel_t, mask=mask)

"""LWD, the layer-wise distillation baseline of TED (paper 001, Liang et al. 2023, §2 Eq. 2-3):
``D_layer = sum_k MSE(H_t^{M(k)}, H_s^k W_s^k)`` with ``W_s^k`` always learnable: hid-seq's loss, another projection."""
from __future__ import annotations

import torch
from torch import nn

from .base import Needs, register_objective
from .hid_seq import HidSeq


@register_objective("lwd")
class LWD(HidSeq):
    """LWD: layer-wise distillation, the baseline of the TED paper (paper 001, Liang et al. 2023, §2 Eq. 2-3).

    Eq. 2: ``D_layer = sum_{k=1..K} MSE(H_t^{M(k)}, H_s^k W_s^k)``, ``W_s^k in R^{d_s x d_t}`` learnable.
    Eq. 3: ``min L(Theta_s) + alpha_1 * D_pred + alpha_2 * D_layer``. In this harness ``M`` is ``ctx.layer_map``
    (``--layer-map ted`` gives the paper's ``M(k) = 2k-1 / 2k``), ``alpha_1 = alpha_kd`` with ``D_pred`` the KL at
    temperature T scaled by T^2, and ``alpha_2 = beta``::

        L = CE + alpha_kd * T^2 * KL(p_T || p_S) + beta * I
        I = sum_{(k, M(k))} 1/N * sum_{(b,i): m[b,i]=1} 1/d_t * sum_{j=1..d_t} ( (H_s^k[b, i] W_s^k)_j - H_t^{M(k)}[b, i]_j )^2

    with ``m`` the attention mask and ``N = sum m`` the real tokens of the batch: the paper's MSE over the ``|x| x d_t``
    matrices, but padded positions are excluded (they change neither the loss nor its gradient; the same
    normalisation as ``hid-seq``).

    ``W_s^k`` is ALWAYS a learnable ``nn.Linear(d_s, d_t, bias=False)``, one per pair, as in Eq. 2 - even when
    ``d_s == d_t``. The paper initialises it at random; here, when ``d_s == d_t`` it starts at the identity, so training
    starts from the plain masked MSE between the hidden states (a student copied from the teacher's layers starts near
    its target instead of being pushed towards a random rotation of it), and only moves away from it as it learns.
    When the sizes differ it keeps ``nn.Linear``'s default random initialisation, as in the paper.
    The difference from ``hid-seq`` is only that ``W`` is learnable (and identity-initialised) for equal sizes too, so
    LWD is a ``HidSeq`` with its own projections: the per-pair loss is hid-seq's.
    Token-aligned: teacher and student must share a tokenizer. The teacher side is detached.
    """

    version = "1.0"
    paper = "Liang et al. 2023 (TED) Eq. 2-3: CE + a1*KD + a2*sum_k MSE(H_t^M(k), H_s^k W_s^k), W learnable"
    needs = Needs(logits=True, hidden_states=True, token_aligned=True)

    def make_projections(self) -> nn.ModuleList:
        """``W_s^k`` per pair, always learnable (Eq. 2); identity-initialised where the hidden sizes agree."""
        proj = self.projections(always=True)
        if self.ctx.student_hidden == self.ctx.teacher_hidden:
            with torch.no_grad():
                for w in proj:
                    nn.init.eye_(w.weight)
        return proj

"""Hid-Seq (paper 002 §3, "Hidden States Transfer"; Jiao et al. 2020): ``L_hid = MSE(H^S W_h, H^T)`` on the whole
sequence's hidden states, over real tokens, summed over the layer pairs. ``lwd`` reuses it with W always learnable."""
from __future__ import annotations

import torch
from torch import nn

from .base import Needs, Outputs, register_objective
from .functional import masked_mse
from .layerwise import LayerObjective


@register_objective("hid-seq")
class HidSeq(LayerObjective):
    """Hid-Seq: hidden-state transfer on the whole sequence (paper 002 §3, "Hidden States Transfer"; Jiao et al. 2020).

    Paper 002: ``L_hid = MSE(H^S W_h, H^T)`` with the sequence embeddings ``H^S in R^{l x d}``, ``H^T in R^{l x d'}``
    in place of the [CLS] vectors of Hid-CLS. Summed over the layer pairs ``(s, t)`` of ``ctx.layer_map``, with
    ``m[b, i]`` the attention mask (1 = real token) and ``N = sum_{b,i} m[b, i]`` the real tokens of the batch::

        I = sum_{(s,t)} 1/N * sum_{(b,i): m[b,i]=1} 1/d_t * sum_{j=1..d_t} ( (H_S^{(s)}[b, i] W_h^{(s,t)})_j - H_T^{(t)}[b, i]_j )^2

    i.e. per pair, the mean over the real tokens of the batch (every real token weighs the same, so longer examples
    weigh more) of the squared error averaged over the teacher's hidden dimension. Padded positions are excluded:
    they do not change the loss or its gradient. With no padding this is ``F.mse_loss`` over ``[B, L, d_t]``.
    ``W_h``: one learnable ``nn.Linear(d_s, d_t, bias=False)`` per pair where the hidden sizes differ, the identity
    otherwise (as for Hid-CLS). Compares token positions, so teacher and student must share a tokenizer
    (``token_aligned=True``). The teacher side is detached.
    Full loss (joint schedule): ``CE + alpha_kd * T^2 * KL + beta * I`` (see ``layerwise``).
    """

    version = "1.0"
    paper = "Wang et al. 2023 §3 Hid-Seq (Jiao et al. 2020): sum over layer pairs of MSE(H_S W_h, H_T) over real tokens"
    needs = Needs(logits=True, hidden_states=True, token_aligned=True)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.proj: nn.ModuleList = self.make_projections()

    def make_projections(self) -> nn.ModuleList:
        """``W_h`` per pair: learnable where the hidden sizes differ, the identity where they agree."""
        return self.projections()

    def pair_loss(self, student: Outputs, teacher: Outputs, s: int, t: int, k: int, batch: dict) -> torch.Tensor:
        w = self.proj[k]
        return masked_mse(student=w(student.hidden_states[s]), teacher=teacher.hidden_states[t], mask=batch["attention_mask"])

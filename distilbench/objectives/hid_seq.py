from __future__ import annotations

import torch
from torch import nn

from .base import Needs, Outputs
from .layerwise import LayerObjective


def masked_mse(h_s: torch.Tensor, h_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens (``mask == 1``) of the squared error averaged over the hidden dimension:
    ``1/N * sum_{(b,i): mask[b,i]=1} 1/d * sum_j (h_s[b,i,j] - h_t[b,i,j])^2`` with ``N = sum_{b,i} mask[b,i]``.

    Padded positions are dropped by indexing (not multiplied by 0), so whatever they hold, even inf or NaN, changes
    neither the value nor any gradient. ``h_s`` and ``h_t`` are ``[B, L, d]`` (``h_s`` already projected)."""
    if h_s.shape[:2] != h_t.shape[:2] or h_s.shape[:2] != mask.shape:
        raise ValueError(f"token-aligned hidden-state loss needs student {tuple(h_s.shape[:2])}, teacher "
                         f"{tuple(h_t.shape[:2])} and attention mask {tuple(mask.shape)} to cover the same [B, L] positions "
                         "(teacher and student must share a tokenizer)")
    keep = mask.bool()
    if not keep.any():
        return h_s.new_zeros((), dtype=torch.float32)
    diff = h_s[keep].float() - h_t[keep].float()  # [N, d]
    return diff.pow(2).mean()


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

    name = "hid-seq"
    version = "1.0"
    paper = "Wang et al. 2023 §3 Hid-Seq (Jiao et al. 2020): sum over layer pairs of MSE(H_S W_h, H_T) over real tokens"
    needs = Needs(logits=True, hidden_states=True, token_aligned=True)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.proj: nn.ModuleList = self.projections()

    def intermediate(self, student: Outputs, teacher: Outputs, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        total = student.logits.new_zeros((), dtype=torch.float32)
        for w, (s, t) in zip(self.proj, self.ctx.layer_map):
            total = total + masked_mse(w(student.hidden_states[s]), teacher.hidden_states[t].detach(), mask)
        return total

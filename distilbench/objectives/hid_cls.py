"""Hid-CLS (paper 002 §3, "Hidden States Transfer"; Sun et al. 2019b): ``L_hid = MSE(h^S W_h, h^T)`` on the [CLS]
hidden states of each layer pair, summed over the pairs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Needs, Outputs, register_objective
from .layerwise import LayerObjective


@register_objective("hid-cls")
class HidCLS(LayerObjective):
    """Hid-CLS: hidden-state transfer on the [CLS] token (paper 002 §3, "Hidden States Transfer"; Sun et al. 2019b).

    Paper 002 writes ``L_hid = MSE(h^S W_h, h^T)`` with ``h^S in R^d``, ``h^T in R^d'`` the [CLS] embeddings of a student
    and a teacher layer and ``W_h in R^{d x d'}`` learnable. Summed over the layer pairs ``(s, t)`` of ``ctx.layer_map``::

        I = sum_{(s,t)} 1/(B * d_t) * sum_{b=1..B} sum_{j=1..d_t} ( (h_S^{(s)}[b, 0] W_h^{(s,t)})_j - h_T^{(t)}[b, 0]_j )^2

    i.e. ``F.mse_loss`` (mean over the batch and the teacher's hidden dimension) at position 0, the [CLS] token, of
    ``hidden_states[s]`` / ``hidden_states[t]`` (index 0 of ``hidden_states`` is the embeddings). ``W_h`` is one
    learnable ``nn.Linear(d_s, d_t, bias=False)`` per pair where the hidden sizes differ and the identity where they are
    equal (``projections()``): with equal sizes the MSE is well defined without a map, and an extra learnable map would
    let the student match the teacher up to any linear transform, a weaker constraint than the paper's same-size case.
    The paper's "[CLS]" is the model's sentence representation (``Objective.sentence``, ``--pooling``): position 0
    for a cls-pooled model, the mean over the real tokens (the batch's attention mask) for a mean-pooled one such as
    the embedded sentence-transformers, whose first token barely varies across inputs at the lower layers. Teacher and
    student may tokenise differently (``token_aligned=False``): each side is pooled over its own tokens. The teacher side is detached: nothing on the teacher's side learns.
    Full loss (joint schedule): ``CE + alpha_kd * T^2 * KL + beta * I`` (see ``layerwise``).
    """

    version = "1.0"
    paper = ("Wang et al. 2023 §3 Hid-CLS (Sun et al. 2019b): sum over layer pairs of MSE(h_S[CLS] W_h, h_T[CLS]); "
             "[CLS] = the model's sentence representation (--pooling)")
    needs = Needs(logits=True, hidden_states=True, token_aligned=False)
    reads_sentence = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.proj = self.projections()

    def pair_loss(self, student: Outputs, teacher: Outputs, s: int, t: int, k: int, batch: dict) -> torch.Tensor:
        h_s = self.sentence(student.hidden_states[s], batch)
        h_t = self.sentence(teacher.hidden_states[t], batch, teacher=True).detach()
        return F.mse_loss(self.proj[k](h_s).float(), h_t.float())

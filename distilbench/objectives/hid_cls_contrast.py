"""Hid-CLS-Contrast (paper 002 §3, which reuses CoDIR's code, Sun et al. 2020a): InfoNCE between the student's
projected, normalised [CLS] and its own example's teacher [CLS] against in-batch negatives, tau = 0.07, per layer pair."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Context, Needs, Outputs, register_objective
from .layerwise import LayerObjective


@register_objective("hid-cls-contrast")
class HidCLSContrast(LayerObjective):
    """Hid-CLS-Contrast: contrastive transfer of the [CLS] hidden states (paper 002 §3, which "inherited" the code of
    CoDIR, Sun et al. 2020a, "Contrastive Distillation on Intermediate Representations", EMNLP 2020).

    For each layer pair ``p = (s, t)`` of ``ctx.layer_map``, the student's projected, L2-normalised [CLS] must pick out
    its own example's teacher [CLS] among the other examples of the batch (CoDIR's contrastive objective in its InfoNCE
    form, with in-batch negatives)::

        z_i = normalize(h_S^{(s)}[i, 0] W_p)          k_j = normalize(h_T^{(t)}[j, 0])       (normalize(x) = x / ||x||_2)
        I_p = 1/B * sum_{i=1..B} -log( exp(z_i . k_i / tau) / ( sum_{j=1..B} exp(z_i . k_j / tau) + sum_{q in Q_p(i)} exp(z_i . q / tau) ) )
        I   = sum_p I_p

    ``Q_p(i)`` is empty by default (``memory_size = 0``: in-batch negatives only). With ``memory_size = M > 0`` it holds
    the normalised teacher [CLS] vectors of layer ``t`` from the last ``M`` training examples seen before this batch
    (a FIFO ring buffer, a non-learnable, detached, non-persistent buffer), minus any entry of the same example as
    anchor ``i`` (matched by ``batch["idx"]``; in a later epoch the bank may hold the anchor's own teacher vector,
    which must not count as a negative). The bank is read and written only in training mode (``objective.train()``,
    as the harness sets it): evaluating the loss in eval mode sees in-batch negatives only and changes nothing. The
    teacher is frozen, so banked vectors never go stale (unlike MoCo's keys) and stay valid across stages and epochs.

    Choices, from CoDIR's released code (github.com/intersun/CoDIR, ``fairseq/criterions/sentence_prediction_crd.py``):
    ``tau = 0.07`` (its ``nce_t``; also the value of CRD, Tian et al. 2020, whose loss it reuses); the representation is
    the hidden state at position 0 ([CLS]/<s>) of each layer. ``W_p``: one learnable ``nn.Linear(d_s, d_t, bias=False)``
    per pair even when ``d_s == d_t`` (``projections(always=True)``): the loss only sees directions, and a fixed identity
    would force the student to reproduce the teacher's exact angular geometry in its raw hidden space, which CoDIR never
    asks (it embeds both sides with learned linear maps before normalising). Default random ``nn.Linear`` init.
    Simplifications against CoDIR, each deliberate: (1) one contrast per layer pair, summed, as every other layer
    objective here, where CoDIR concatenates the [CLS] vectors of all layers into one vector per model; (2) the teacher
    side is the normalised teacher [CLS] itself, with no learnable teacher-side embedding (nothing on the teacher side
    learns); (3) InfoNCE over in-batch (plus optional FIFO bank) negatives, where CoDIR uses CRD's NCE approximation,
    symmetric in teacher and student, with a momentum memory over the whole training set and negatives drawn from
    examples of other labels. With a batch of one example and no bank the term is exactly 0 (nothing to contrast).
    "[CLS]" is the model's sentence representation (``Objective.sentence``, ``--pooling``: position 0, or the mean over
    the real tokens for a mean-pooled model), each side pooled over its own tokens (``token_aligned=False``).
    Full loss (joint schedule): ``CE + alpha_kd * T^2 * KL + beta * I`` (see ``layerwise``).
    """

    version = "1.0"
    paper = ("Wang et al. 2023 §3 Hid-CLS-Contrast (CoDIR, Sun et al. 2020a): InfoNCE on normalised [CLS], tau=0.07; "
             "[CLS] = the model's sentence representation (--pooling)")
    needs = Needs(logits=True, hidden_states=True, token_aligned=False)
    reads_sentence = True
    tau: float = 0.07  # InfoNCE temperature (CoDIR's nce_t)
    memory_size: int = 0  # FIFO bank of past teacher [CLS] vectors as extra negatives; 0 = in-batch negatives only

    def __init__(self, ctx: Context, memory_size: int | None = None):
        super().__init__(ctx)
        self.proj: nn.ModuleList = self.projections(always=True)
        self.memory_size = int(self.memory_size if memory_size is None else memory_size)
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0 (got {self.memory_size})")
        self.register_buffer("bank", torch.zeros(len(ctx.layer_map), self.memory_size, ctx.teacher_hidden), persistent=False)
        self.register_buffer("bank_idx", torch.full((self.memory_size,), -1, dtype=torch.long), persistent=False)
        self.bank_ptr = 0  # next slot to write
        self.bank_filled = 0  # slots holding a vector (<= memory_size)

    def intermediate(self, student: Outputs, teacher: Outputs, batch: dict) -> torch.Tensor:
        total = super().intermediate(student, teacher, batch)
        if self.memory_size > 0 and self.training:  # only after every pair read the bank: no example is its own negative
            self._push(torch.stack([self._key(teacher, t, batch) for _, t in self.ctx.layer_map]), batch.get("idx"))
        return total

    def _key(self, teacher: Outputs, t: int, batch: dict) -> torch.Tensor:
        """The normalised teacher sentence representation of layer ``t`` ``[B, d_t]``, in float32 even under autocast."""
        h = teacher.hidden_states[t]
        with torch.autocast(h.device.type, enabled=False):
            return F.normalize(self.sentence(h.detach().float(), batch, teacher=True), dim=-1)

    def pair_loss(self, student: Outputs, teacher: Outputs, s: int, t: int, k: int, batch: dict) -> torch.Tensor:
        idx = batch.get("idx")
        z_raw = self.proj[k](self.sentence(student.hidden_states[s], batch))
        # similarities in float32 even under autocast: a bf16 matmul would round cosines before the 1/tau scaling
        with torch.autocast(z_raw.device.type, enabled=False):
            z = F.normalize(z_raw.float(), dim=-1)  # [B, d_t]
            logits = z @ self._key(teacher, t, batch).T / self.tau  # [B, B]; the positive is on the diagonal
            if self.memory_size > 0 and self.training and self.bank_filled:
                extra = z @ self.bank[k, : self.bank_filled].T / self.tau  # [B, filled]
                if idx is not None:  # the anchor's own example is no negative
                    same = idx.view(-1, 1).to(self.bank_idx.device) == self.bank_idx[: self.bank_filled].view(1, -1)
                    extra = extra.masked_fill(same, float("-inf"))
                logits = torch.cat([logits, extra], 1)
            return F.cross_entropy(logits, torch.arange(len(z), device=z.device))

    @torch.no_grad()
    def _push(self, keys: torch.Tensor, idx: torch.Tensor | None) -> None:
        """Write this batch's normalised teacher vectors ``keys`` [P, B, d_t] into the FIFO bank, oldest first out."""
        m = self.memory_size
        keys = keys[:, -m:]  # a batch larger than the bank keeps its last m examples
        n = keys.shape[1]
        slots = (self.bank_ptr + torch.arange(n)) % m
        self.bank[:, slots.to(self.bank.device)] = keys.detach().to(self.bank.dtype)
        ids = idx[-m:] if idx is not None else torch.full((n,), -1, dtype=torch.long)
        self.bank_idx[slots.to(self.bank_idx.device)] = ids.to(self.bank_idx.device, torch.long)
        self.bank_ptr = (self.bank_ptr + n) % m
        self.bank_filled = min(self.bank_filled + n, m)

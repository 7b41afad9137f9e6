"""What an objective reads from the models: their outputs in one shape (:func:`model_outputs`), and the teacher's
outputs per batch (:class:`TeacherSource`), from the on-disk caches where they cover what it needs, else live."""
from __future__ import annotations

import torch
from torch import nn

from ...data.batching import MODEL_INPUTS
from ...models.capture import capture
from ...objectives import Needs, Outputs


def model_outputs(model: nn.Module, batch: dict, needs: Needs, prefix: str = "") -> Outputs:
    inputs = {k: batch[prefix + k] for k in MODEL_INPUTS if prefix + k in batch}
    if not needs.attentions:
        out = model(**inputs, output_hidden_states=needs.hidden_states)
        return Outputs(_logits(out), out.hidden_states if needs.hidden_states else None)
    with capture(model) as layers:  # pre-softmax scores and per-head values need more than output_attentions gives
        out = model(**inputs, output_hidden_states=needs.hidden_states)
    return Outputs(_logits(out), out.hidden_states if needs.hidden_states else None, layers)


def _logits(out) -> torch.Tensor | None:
    """``[B, C]`` class scores, or an extractive QA model's ``[B, L, 2]`` (start, end) scores per token; None for an
    encoder without a head (task-agnostic distillation)."""
    if getattr(out, "start_logits", None) is not None:
        return torch.stack((out.start_logits, out.end_logits), dim=-1)
    return getattr(out, "logits", None)


class TeacherSource:
    """The teacher's outputs for a batch. A frozen teacher in eval mode gives the same logits every epoch and seed, so
    when an objective needs only logits they come from a cache computed once; otherwise the teacher runs, without
    gradients, on its own tokenisation when it has one."""

    def __init__(self, teachers: list[nn.Module], needs: Needs, logits_cache: list[torch.Tensor | None] | None = None,
                 own_tokens: bool = False, output_cache: list | None = None, layers: list[int] | None = None):
        self.teachers, self.needs, self.own_tokens = teachers, needs, own_tokens
        self.cache = logits_cache or [None] * len(teachers)
        self.outputs = output_cache or [None] * len(teachers)  # teacher_cache.OutputCache: hidden states, scores, values
        self.layers = layers or []
        self.calls = 0  # teacher forward passes actually run (the cache makes this 0)
        for t in teachers:
            t.eval().requires_grad_(False)

    def covered(self, i: int) -> bool:
        if self.cache[i] is None:
            return False
        if self.needs == Needs(logits=True, token_aligned=self.needs.token_aligned):
            return True
        return self.outputs[i] is not None and self.outputs[i].covers(self.needs, self.layers)

    @torch.no_grad()
    def __call__(self, batch: dict, i: int = 0) -> Outputs:
        device = batch["input_ids"].device
        if self.covered(i):
            logits = self.cache[i][batch["idx"].cpu()].to(device)
            if logits.dim() == 3:  # per-token scores (extractive QA windows), cached at full width: cut to the batch's
                logits = logits[:, : batch["input_ids"].shape[1]]
            if self.outputs[i] is None:
                return Outputs(logits)
            return self.outputs[i].outputs(batch["idx"].cpu(), logits, device)
        self.calls += 1
        return model_outputs(self.teachers[i], batch, self.needs, "teacher_" if self.own_tokens else "")

"""Capture per-layer attention internals (pre-softmax scores, probabilities, per-head Q/K/V) without editing model code.

Two routes, chosen per model:

* Models that call transformers' attention interface (``_supports_attention_backend``: BERT, RoBERTa, ELECTRA, ...):
  a registered attention function, ``distilbench_capture``, computes eager attention and records its tensors while a
  recorder is active; with no recorder it hands over to ``sdpa``, so evaluation stays fast.
* Models that compute attention inline but expose query/key/value projections (MPNet): forward hooks on the
  projections record Q, K, V, and a pre-hook records the relative position bias, from which the scores are rebuilt
  exactly as the model computes them.

Any other model gets a clear error naming what is missing. Scores are recorded *before* the padding mask is added
and before softmax (what Att-MSE compares); probabilities after softmax and masking (what Att-KL compares).
"""
from __future__ import annotations

import contextvars
import inspect
import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .inits import layer_list

IMPLEMENTATION = "distilbench_capture"
_ACTIVE: contextvars.ContextVar[list | None] = contextvars.ContextVar("distilbench_capture", default=None)


def _record(store: list, scores, probs, q, k, v) -> None:
    store.append({"scores": scores, "probs": probs, "q": q, "k": k, "v": v})


def _capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    store = _ACTIVE.get()
    if store is None:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    probs = F.softmax(scores if attention_mask is None else scores + attention_mask, dim=-1)
    _record(store, scores, probs, query, key, value)
    out = torch.matmul(F.dropout(probs, p=dropout, training=module.training), value)
    return out.transpose(1, 2).contiguous(), probs


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(IMPLEMENTATION, _capture_attention)
    # the padding mask in eager's additive form (0 / dtype-min), which sdpa accepts as well
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def _projections(attn: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear] | None:
    for names in (("query", "key", "value"), ("q", "k", "v")):
        mods = [getattr(attn, n, None) for n in names]
        if all(isinstance(m, nn.Linear) for m in mods):
            return tuple(mods)  # type: ignore[return-value]
    return None


class _LazyLayer(dict):
    """One layer's record on the hook route: Q, K, V at once; ``scores`` and ``probs`` computed on first read, as the
    model computes them. An objective that reads only values (Val-KL) then pays for no second attention map: the
    model has already computed its own inline, and rebuilding it every step cost Val-KL ~5% of a training step."""

    def __init__(self, q, k, v, bias, mask):
        super().__init__(q=q, k=k, v=v)
        self._bias, self._mask = bias, mask

    def __missing__(self, key):
        if key == "scores":
            scores = torch.matmul(self["q"], self["k"].transpose(-1, -2)) / math.sqrt(self["q"].size(-1))
            if self._bias is not None:
                scores = scores + self._bias  # MPNet's relative position bias is part of its pre-softmax score
            self[key] = scores
        elif key == "probs":
            scores = self["scores"]
            self[key] = F.softmax(scores if self._mask is None else scores + self._mask, dim=-1)
        else:
            raise KeyError(key)
        return self[key]


class _HookAdapter:
    """Hooks on each layer's Q/K/V projections (MPNet and other inline-attention encoders)."""

    def __init__(self, model: nn.Module):
        self.heads = getattr(model.config, "num_attention_heads", None)
        if not self.heads:
            raise UsageError(f"cannot capture attention of {type(model).__name__}: its config has no num_attention_heads")
        self.attns = []
        for i, layer in enumerate(layer_list(model)[1]):
            found = [(m, _projections(m)) for m in layer.modules() if _projections(m) is not None]
            if len(found) != 1:
                raise UsageError(f"cannot capture attention of {type(model).__name__}: layer {i + 1} has no single self-attention "
                                 "with query/key/value projections, and the model does not use transformers' attention interface")
            self.attns.append(found[0])

    @contextmanager
    def active(self, store: list) -> Iterator[None]:
        handles, cache = [], {}

        def keep(name):
            def hook(mod, args, out):
                b, n, _ = out.shape
                cache[name] = out.view(b, n, self.heads, -1).transpose(1, 2)
            return hook

        def pre(mod, args, kwargs):
            bound = inspect.signature(mod.forward).bind_partial(*args, **kwargs).arguments
            cache["bias"], cache["mask"] = bound.get("position_bias"), bound.get("attention_mask")

        def post(mod, args, kwargs, out):
            store.append(_LazyLayer(cache["q"], cache["k"], cache["v"], cache.get("bias"), cache.get("mask")))

        for attn, (q, k, v) in self.attns:
            handles += [q.register_forward_hook(keep("q")), k.register_forward_hook(keep("k")), v.register_forward_hook(keep("v")),
                        attn.register_forward_pre_hook(pre, with_kwargs=True), attn.register_forward_hook(post, with_kwargs=True)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def prepare(model: nn.Module) -> nn.Module:
    """Make ``model`` capturable; call once after loading. Interface models switch to ``distilbench_capture``."""
    if getattr(model, "_supports_attention_backend", False):
        _register()
        model.set_attn_implementation(IMPLEMENTATION)
        model._distilbench_capture = None
    else:
        model._distilbench_capture = _HookAdapter(model)
    return model


@contextmanager
def capture(model: nn.Module) -> Iterator[list[dict]]:
    """Record one forward pass: yields a list, filled with one dict per layer (scores, probs, q, k, v; [B, H, L, *])."""
    model = getattr(model, "module", model)  # under DDP (accelerate launch) the model is wrapped
    if not hasattr(model, "_distilbench_capture"):
        prepare(model)
    store: list[dict] = []
    adapter = model._distilbench_capture
    token = _ACTIVE.set(store)
    try:
        if adapter is None:
            yield store
        else:
            with adapter.active(store):
                yield store
    finally:
        _ACTIVE.reset(token)

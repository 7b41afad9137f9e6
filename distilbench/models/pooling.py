"""The sentence representation of an encoder: its first token (``cls``) or the mean over its real tokens (``mean``).

A sentence-transformers checkpoint (both embedded models) was trained with mean pooling: its first token barely varies
across inputs at the lower layers, so a head or an objective that reads it there reads a near-constant vector. An
MLM-pretrained encoder (BERT, RoBERTa, DeBERTa) was trained with its [CLS] token as the sentence summary. The pooling is
therefore a property of the model: declared per alias in ``registry/models.yaml``, read from a sentence-transformers
folder's ``1_Pooling/config.json`` where there is one, and ``cls`` otherwise (overridable with ``--pooling``).

A classification model keeps its own head (BERT's pooler, MPNet's and RoBERTa's classification heads all read position
0 of the sequence they receive); with ``mean`` pooling that head receives the masked mean instead, as a one-position
sequence, through two forward hooks. The mode is written into the model's config (``distilbench_pooling``), so a saved
teacher or student carries it and :func:`restore_pooling` re-applies it after loading.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError

POOLINGS = ("cls", "mean")
CONFIG_KEY = "distilbench_pooling"


def sentence_representation(h: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """``[B, L, d]`` hidden states -> ``[B, d]``: position 0 (``cls``), or the mean over the positions where ``mask``
    (``[B, L]``, 1 = real token) is 1 (``mean``; every position when ``mask`` is None)."""
    if mode == "cls":
        return h[:, 0]
    if mode != "mean":
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} (got {mode!r})")
    if mask is None:
        return h.mean(1)
    m = mask[:, : h.shape[1]].to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def folder_pooling(path: Path) -> str | None:
    """The pooling a local model folder declares: a sentence-transformers ``1_Pooling/config.json``, else a
    ``distilbench_pooling`` key in ``config.json`` (a teacher or student saved by distilbench); None when neither."""
    st = path / "1_Pooling" / "config.json"
    if st.is_file():
        modes = json.loads(st.read_text())
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
        if modes.get("pooling_mode_cls_token"):
            return "cls"
    cfg = path / "config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text()).get(CONFIG_KEY)
        if value in POOLINGS:
            return value
    return None


def check_pooling(value: str | None, flag: str = "--pooling") -> None:
    if value is not None and value not in POOLINGS:
        raise UsageError(f"{flag} must be one of {', '.join(POOLINGS)} (got {value!r})")


def _reader(model: nn.Module) -> nn.Module | None:
    """The module that reads position 0 of the encoder's sequence output: BERT's pooler, else a top-level pooler
    (DeBERTa's ContextPooler), else the classification head (MPNet, RoBERTa, ELECTRA)."""
    base = getattr(model, "base_model", model)
    for owner, name in ((base, "pooler"), (model, "pooler"), (model, "classifier")):
        module = getattr(owner, name, None) if owner is not None else None
        if isinstance(module, nn.Module):
            return module
    return None


def is_sentence_classifier(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def set_pooling(model: nn.Module, mode: str) -> nn.Module:
    """Make ``model``'s classification head read ``mode``'s sentence representation and record the mode in its config.
    Idempotent; a model that is not a sequence classifier (extractive QA, causal LM: per-token heads) is left as is."""
    check_pooling(mode, "pooling")
    model = getattr(model, "module", model)  # under DDP the model is wrapped
    for handle in getattr(model, "_distilbench_pooling_hooks", ()):
        handle.remove()
    model._distilbench_pooling_hooks = []
    if not is_sentence_classifier(model):
        return model
    setattr(model.config, CONFIG_KEY, mode)
    if mode == "cls":
        return model
    reader = _reader(model)
    if reader is None:
        raise UsageError(f"cannot apply mean pooling to {type(model).__name__}: no pooler or classifier module reads its "
                         "first token; use --pooling cls")

    state: dict = {}  # the current forward's padding mask (a copy of the model shares it: forwards run one at a time)

    def remember_mask(module, args, kwargs):
        state["mask"] = kwargs.get("attention_mask")

    def pool(module, args, kwargs):
        h = args[0] if args else kwargs.get("hidden_states", kwargs.get("features"))
        if h is None or h.dim() != 3:
            return None
        pooled = sentence_representation(h, state.get("mask"), "mean")[:, None]
        return ((pooled, *args[1:]), kwargs) if args else (args, {**kwargs, next(k for k in ("hidden_states", "features") if k in kwargs): pooled})

    model._distilbench_pooling_hooks = [model.register_forward_pre_hook(remember_mask, with_kwargs=True),
                                        reader.register_forward_pre_hook(pool, with_kwargs=True)]
    return model


def restore_pooling(model: nn.Module) -> nn.Module:
    """Re-apply the pooling a model's config records (``cls`` when it records none: every checkpoint before this)."""
    inner = getattr(model, "module", model)
    return set_pooling(model, getattr(inner.config, CONFIG_KEY, None) or "cls") if is_sentence_classifier(inner) else model


def model_pooling(model: nn.Module) -> str:
    """The pooling a loaded model uses."""
    inner = getattr(model, "module", model)
    return getattr(inner.config, CONFIG_KEY, None) or "cls"

"""From-scratch causal language models, for a teacher where no pretrained one is available offline: a byte-level BPE
tokenizer trained deterministically on the training text, and a GPT-2-style model of a named size or ``key=value``
configuration, randomly initialised from a seed. A teacher built here shows the harness working, not a paper's numbers
(TED's Table 1 distils the pretrained 124M GPT-2; ``gpt2-small`` is its shape, untrained).

Determinism: the same lines give the same tokenizer, byte for byte, in separate processes (tests/test_scratch.py
checks it). The ``tokenizers`` BPE trainer is known to vary between runs through continuing-subword tokens (a
``##``-style prefix), whose ids follow hash-map order and then break ties between equally frequent pairs
(huggingface/tokenizers issue 1794, pull request 2066); byte-level BPE uses no such prefix, and none is set here.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..errors import UsageError

EOT = "<|endoftext|>"  # GPT-2's end-of-text token: the only special token, also used for padding

# GPT-2-style shapes by name; gpt2-small is GPT-2's own (12 layers, 768 wide, 12 heads)
SIZES: dict[str, dict[str, int]] = {
    "gpt2-tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2},
    "gpt2-mini": {"n_layer": 6, "n_embd": 256, "n_head": 4},
    "gpt2-small": {"n_layer": 12, "n_embd": 768, "n_head": 12},
}
KEYS: dict[str, type] = {"n_layer": int, "n_embd": int, "n_head": int, "n_inner": int, "n_positions": int,
                         "dropout": float}


def train_bpe(lines: Iterable[str], vocab_size: int):  # -> transformers.PreTrainedTokenizerFast
    """A byte-level BPE tokenizer (GPT-2's scheme: every byte is a token, so nothing is unknown) with ``vocab_size``
    tokens at most, ``<|endoftext|>`` first, trained on ``lines`` by the ``tokenizers`` library; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise UsageError(f"a byte-level BPE vocabulary needs at least {len(alphabet) + 1} tokens (256 bytes and "
                         f"{EOT}; got {vocab_size})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, pad_token=EOT)


def parse_config(spec: str) -> dict[str, Any]:
    """The model shape ``spec`` names: a size (``gpt2-tiny``), ``key=value`` pairs, or a size then overrides
    (``gpt2-tiny,n_layer=4``). Keys: n_layer, n_embd, n_head, n_inner, n_positions, dropout (all three dropouts)."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    shape: dict[str, Any] = {}
    if parts and "=" not in parts[0]:
        name = parts.pop(0)
        if name not in SIZES:
            raise UsageError(f"unknown model size {name!r}; accepted: {', '.join(SIZES)}, or key=value pairs "
                             f"({', '.join(KEYS)})")
        shape.update(SIZES[name])
    for part in parts:
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in KEYS or not value.strip():
            raise UsageError(f"model config {part!r} is not key=value with a key among {', '.join(KEYS)}")
        try:
            shape[key] = KEYS[key](value.strip())
        except ValueError:
            raise UsageError(f"model config {part!r}: {key} takes {'an integer' if KEYS[key] is int else 'a number'}") from None
    missing = [k for k in ("n_layer", "n_embd", "n_head") if k not in shape]
    if missing:
        raise UsageError(f"model config {spec!r} leaves {', '.join(missing)} unset; name a size ({', '.join(SIZES)}) "
                         "or give them as key=value")
    if min(v for k, v in shape.items() if k != "dropout") < 1 or shape["n_embd"] % shape["n_head"]:
        raise UsageError(f"model config {spec!r}: sizes must be >= 1 and n_embd a multiple of n_head")
    return shape


def random_causal_lm(spec: str, tokenizer, seed: int = 0, n_positions: int = 1024):
    """A GPT-2-style ``GPT2LMHeadModel`` of shape ``spec`` (:func:`parse_config`) for ``tokenizer``'s vocabulary,
    initialised from ``seed`` (transformers' own initialisation; the same seed gives the same weights)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = parse_config(spec)
    dropout = shape.pop("dropout", 0.1)
    shape.setdefault("n_positions", n_positions)
    config = GPT2Config(vocab_size=len(tokenizer), resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


SCRATCH = "scratch:"  # a teacher named scratch:SPEC is trained from scratch (`distilbench teacher --init random`)
SCRATCH_NOTE = ("from-scratch teacher (randomly initialised, trained here on the training text, BPE tokenizer trained "
                "on it too): results with it show the harness working, not the paper's numbers")


def is_scratch(name: str | None) -> bool:
    return bool(name) and str(name).startswith(SCRATCH)


def scratch_spec(name: str) -> str:
    spec = name[len(SCRATCH):]
    parse_config(spec)  # a bad shape is refused now, in one line
    return spec


def scratch_identity(name: str, bpe_vocab: int) -> dict[str, Any]:
    """What a from-scratch teacher's weights depend on besides its data and training settings: its shape, its
    tokenizer's vocabulary size and the library that trains the tokenizer (part of its cache key)."""
    import tokenizers

    return {"init": "random", "shape": parse_config(scratch_spec(name)), "tokenizer": "byte-level BPE",
            "bpe_vocab": bpe_vocab, "tokenizers": tokenizers.__version__}


def scratch_config(name: str, vocab_size: int, n_positions: int = 1024):
    """The ``GPT2Config`` a from-scratch teacher will have (before its tokenizer exists: ``vocab_size`` at most)."""
    from transformers import GPT2Config

    shape = parse_config(scratch_spec(name))
    shape.pop("dropout", None)
    shape.setdefault("n_positions", n_positions)
    return GPT2Config(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0, **shape)  # 0: EOT

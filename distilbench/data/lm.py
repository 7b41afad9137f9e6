"""Causal language modelling data: a corpus tokenised deterministically, packed into training blocks, cut into
evaluation windows, and the next-token NLL that perplexity is built from.

A corpus split is a list of lines (:func:`.tasks.load_split` returns each as an ``Example`` with ``text_a`` = the line,
its newline included, and no label). Tokenisation (:func:`corpus_ids`): each line on its own, without special tokens,
the ids concatenated in file order; so the ids depend only on the text and the tokenizer, never on batching or
``--max-length``.

Training (:func:`pack_blocks`): consecutive, non-overlapping blocks of ``--max-length`` tokens; the last partial block
is dropped (every block full: no padding, so token means over micro-batches are exact). Evaluation
(:func:`eval_windows`): windows of at most ``--max-length`` tokens every ``stride`` tokens (Hugging Face's
"perplexity of fixed-length models"). ``stride = max_length`` gives non-overlapping blocks: every token is scored
once except the first of each block, which has nothing before it in its block. A smaller stride (a sliding window)
gives each scored token at least ``max_length - stride`` tokens of context and scores every token but the corpus's
first exactly once. Perplexity = ``exp(sum NLL / scored tokens)`` over the whole split (a token-weighted mean, not a
mean of per-window means).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .tasks import Example

IGNORE = -100  # a label that is no target (context-only or padded positions), as transformers' losses read it


def corpus_ids(tokenizer, lines: Sequence[Example]) -> list[int]:
    """The token ids of a corpus split: each line tokenised on its own (no special tokens), concatenated in order."""
    if not lines:
        return []
    enc = tokenizer([e.text_a for e in lines], add_special_tokens=False)["input_ids"]
    return [i for row in enc for i in row]


def _check_length(ids: Sequence[int], block: int, where: str) -> None:
    if len(ids) < block:
        raise DataError(f"{where} has {len(ids)} tokens, fewer than one block of --max-length {block}: give a longer "
                        f"corpus or a smaller --max-length")


def pack_blocks(ids: Sequence[int], block: int, where: str = "the corpus") -> list[list[int]]:
    """Consecutive non-overlapping blocks of ``block`` tokens; the last partial block is dropped. A corpus shorter than
    one block is refused (:class:`DataError`, one line naming ``where``)."""
    _check_length(ids, block, where)
    return [list(ids[i:i + block]) for i in range(0, len(ids) - block + 1, block)]


@dataclass(frozen=True)
class Window:
    input_ids: list[int]
    labels: list[int]  # IGNORE on the positions that are context only; labels[j] is predicted from position j - 1


def eval_windows(ids: Sequence[int], max_length: int, stride: int | None = None,
                 where: str = "the corpus") -> list[Window]:
    """Evaluation windows over the whole split: at most ``max_length`` tokens, starting every ``stride`` tokens
    (default ``max_length``: non-overlapping blocks, the last one shorter). In each window the tokens already scored by
    the previous one are context only (label IGNORE). A corpus shorter than one block is refused."""
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise DataError(f"the evaluation stride must be in 1..--max-length {max_length} (got {stride})")
    _check_length(ids, max_length, where)
    windows, scored_to = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        window = list(ids[begin:end])
        n_context = len(window) - (end - scored_to)
        windows.append(Window(window, [IGNORE] * n_context + window[n_context:]))
        scored_to = end
        if end == len(ids):
            break
    return windows


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The summed negative log-likelihood of the next tokens and their count: position ``i``'s logits ``[B, L, V]``
    predict ``labels[:, i + 1]``; a label of IGNORE (-100) is no target. Mean NLL = sum / count."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1])
    target = labels[:, 1:].reshape(-1)
    keep = target != IGNORE
    n = int(keep.sum())
    if n == 0:
        return logits.new_zeros((), dtype=torch.float32), 0
    return F.cross_entropy(pred[keep].float(), target[keep], reduction="sum"), n


def perplexity(nll_sum: float, tokens: int) -> float:
    """``exp(mean token NLL)``; inf when the mean overflows."""
    if tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    mean = nll_sum / tokens
    return math.exp(mean) if mean < 700 else math.inf


@dataclass
class LMBlocks:
    """A corpus split packed into training blocks (:func:`pack_blocks`): the unit of batching, as ``Encoded``'s
    examples are for classification (``lengths()``, ``subset()`` alike). ``idx[i]`` is block ``i``'s number among its
    split's blocks (stable across seeds: a teacher-output cache's key); a batch's labels are its input ids (every
    block full: no padding)."""

    input_ids: list[list[int]]
    pad_id: int
    idx: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def examples(self) -> list[int]:  # what the harness counts (len) and fingerprints: the blocks' numbers
        return self.idx

    def lengths(self):
        return np.array([len(x) for x in self.input_ids])

    def subset(self, positions: Sequence[int]) -> "LMBlocks":
        return LMBlocks([self.input_ids[i] for i in positions], self.pad_id, [self.idx[i] for i in positions])


def lm_blocks(tokenizer, lines: Sequence[Example], max_length: int, where: str = "the corpus") -> LMBlocks:
    """``lines`` tokenised (:func:`corpus_ids`) and packed into blocks of ``max_length`` tokens (a corpus shorter than
    one block is refused in one line)."""
    blocks = pack_blocks(corpus_ids(tokenizer, lines), max_length, where)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return LMBlocks(blocks, int(pad or 0), list(range(len(blocks))))


def collate_blocks(blocks: LMBlocks, ids: list[int]) -> dict[str, torch.Tensor]:
    """A batch of full blocks: ``input_ids``, ``attention_mask`` (all ones), ``labels`` = the input ids (the model's
    position i predicts label i + 1, :func:`next_token_nll`) and ``idx``."""
    rows = torch.tensor([blocks.input_ids[i] for i in ids], dtype=torch.long)
    return {"input_ids": rows, "attention_mask": torch.ones_like(rows), "labels": rows.clone(),
            "idx": torch.tensor([blocks.idx[i] for i in ids], dtype=torch.long)}

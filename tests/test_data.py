"""Splits, subsampling and length-grouped batching: deterministic, disjoint, complete."""
from __future__ import annotations

import numpy as np
import torch

from distilbench.data.batching import (collate, encode, eval_batches, length_grouped_batches, selection_split, subsample)
from distilbench.data.tasks import Example


def _examples(n):
    return [Example(i, "word " * (1 + i % 17), None if i % 2 else "other", i % 2) for i in range(n)]


def test_selection_split_is_seeded_disjoint_and_complete():
    ex = _examples(100)
    train0, sel0 = selection_split(ex, 0.1, seed=0)
    train0b, sel0b = selection_split(ex, 0.1, seed=0)
    _, sel1 = selection_split(ex, 0.1, seed=1)
    assert [e.idx for e in sel0] == [e.idx for e in sel0b] and len(sel0) == 10 and len(train0) == 90
    assert not {e.idx for e in train0} & {e.idx for e in sel0}
    assert {e.idx for e in train0} | {e.idx for e in sel0} == set(range(100))
    assert {e.idx for e in sel0} != {e.idx for e in sel1}


def test_subsample_is_fixed_whatever_the_seed():
    ex = _examples(1000)
    a, b = subsample(ex, 64), subsample(ex, 64)
    assert [e.idx for e in a] == [e.idx for e in b] and len(a) == 64
    assert [e.idx for e in a] == sorted(e.idx for e in a)  # file order kept
    assert subsample(ex, None) is ex and subsample(ex, 5000) is ex


def test_length_grouped_batches_cover_every_example_once_and_depend_on_seed_and_epoch():
    lengths = np.random.RandomState(0).randint(5, 120, size=503)
    b = length_grouped_batches(lengths, 16, seed=0, epoch=0)
    flat = sorted(i for batch in b for i in batch)
    assert flat == list(range(503))
    assert b == length_grouped_batches(lengths, 16, seed=0, epoch=0)
    assert b != length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert b != length_grouped_batches(lengths, 16, seed=0, epoch=1)
    # grouping: padding waste is far lower than for random batches of the same size
    waste = sum(max(lengths[x]) * len(x) - sum(lengths[x]) for x in b)
    rand = np.random.RandomState(1).permutation(503)
    rand_waste = sum(max(lengths[rand[i:i + 16]]) * len(rand[i:i + 16]) - sum(lengths[rand[i:i + 16]]) for i in range(0, 503, 16))
    assert waste < 0.3 * rand_waste


def test_eval_batches_sorted_and_complete():
    lengths = np.array([3, 9, 1, 7, 5])
    b = eval_batches(lengths, 2)
    assert b == [[1, 3], [4, 0], [2]]


def test_collate_pads_dynamically_and_keeps_file_rows():
    from distilbench.models.loading import load_tokenizer

    tok = load_tokenizer("minilm-l6")
    ex = [Example(40, "a short one", "b", 1), Example(7, "a much longer sentence with many more words", "c", 0)]
    enc = encode(tok, ex, max_length=128)
    batch = collate(enc, [0, 1], regression=False)
    width = max(len(r) for r in enc.input_ids)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"].sum(1).tolist() == [len(r) for r in enc.input_ids]
    assert (batch["input_ids"][0, len(enc.input_ids[0]):] == tok.pad_token_id).all()
    assert batch["idx"].tolist() == [40, 7] and batch["labels"].dtype == torch.long
    assert "token_type_ids" in batch
    assert encode(tok, ex, max_length=6).lengths().max() == 6

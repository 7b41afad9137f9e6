"""The corpus of task-agnostic distillation: it never reads a split a fine-tuned student is scored on, its held-out
lines are chosen by a stable hash, and packing into encoder blocks follows the formula on a tiny corpus."""
from __future__ import annotations

import pathlib

import pytest
import torch

from distilbench.data import corpus as C
from distilbench.errors import UsageError

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "glue").is_dir(), reason=f"real data not found at {DATA}")

CLS, SEP, PAD = 101, 102, 0


class WordTokenizer:
    """Each whitespace-separated word is one token, id 1000 + its position in ``vocab``; '' -> [CLS, SEP]."""

    pad_token_id = PAD

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def _ids(self, text: str) -> list[int]:
        return [1000 + self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]

    def __call__(self, text, add_special_tokens=True, verbose=True):
        rows = [text] if isinstance(text, str) else list(text)
        ids = [self._ids(t) if not add_special_tokens else [CLS, *self._ids(t), SEP] for t in rows]
        return {"input_ids": ids[0] if isinstance(text, str) else ids}


def test_packing_by_formula_on_a_tiny_corpus():
    tok = WordTokenizer()
    blocks = C.pack_encoder_blocks(tok, ["a b c", "d e", "f g h i"], max_length=5)  # 9 tokens, 3 per block
    a, b, c, d, e, f, g, h, i = range(1000, 1009)
    assert blocks.input_ids.tolist() == [[CLS, a, b, c, SEP], [CLS, d, e, f, SEP], [CLS, g, h, i, SEP]]
    assert blocks.attention_mask.tolist() == [[1] * 5] * 3
    short = C.pack_encoder_blocks(WordTokenizer(), ["a b c d"], max_length=4)  # 2 + 2: the last block padded
    assert short.input_ids.tolist() == [[CLS, a, b, SEP], [CLS, c, d, SEP]]
    ragged = C.pack_encoder_blocks(WordTokenizer(), ["a b c d e"], max_length=5)
    assert ragged.input_ids.tolist() == [[CLS, a, b, c, SEP], [CLS, d, e, SEP, PAD]]
    assert ragged.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert ragged.tokens == 9 and len(ragged) == 2
    with pytest.raises(UsageError, match="at least 3"):
        C.pack_encoder_blocks(WordTokenizer(), ["a"], max_length=2)


def test_held_out_lines_are_chosen_by_their_own_hash():
    lines = [("s", f"line {k}") for k in range(4000)]
    chosen = {line for source, line in lines if C.held_out(source, line, 0.05)}
    again = {line for source, line in reversed(lines) if C.held_out(source, line, 0.05)}
    assert chosen == again  # the order never changes which lines are held out
    assert 150 < len(chosen) < 250  # ~5% of 4,000
    assert not C.held_out("s", "line 0", 0.0) and C.held_out("s", "line 0", 1.0)


def _spec(**source):
    return {"name": "x", "version": "1", "sources": [source], "held_out": 0.01, "provenance": "p"}


def test_a_corpus_file_that_would_read_a_scored_split_is_refused():
    with pytest.raises(ValueError, match="only a task's train split"):
        C.corpus_from_yaml(_spec(task="rte", split="dev"), "x.yaml")
    with pytest.raises(ValueError, match="task or a file"):
        C.corpus_from_yaml(_spec(task="rte", file="a.txt"), "x.yaml")
    with pytest.raises(ValueError, match="held_out"):
        C.corpus_from_yaml({**_spec(task="rte"), "held_out": 0.7}, "x.yaml")
    assert {"RTE/dev.tsv", "QNLI/dev.tsv", "wikitext-2-tokens/test.txt"} <= C.scored_files()
    scored = C.corpus_from_yaml(_spec(file="glue/RTE/dev.tsv"), "x.yaml")
    with pytest.raises(UsageError, match="scored on"):
        list(C.corpus_lines(scored, DATA))
    devsplit = C.corpus_from_yaml(_spec(task="qnli-devsplit", split="train", dir="glue"), "x.yaml")
    with pytest.raises(UsageError, match="scored on"):  # its train split is QNLI's dev file
        list(C.corpus_lines(devsplit, DATA))


@needs_data
def test_the_registered_corpus_reads_training_text_only(monkeypatch):
    opened = []
    real_open, real_read = pathlib.Path.open, pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k))
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: opened.append(self) or real_read(self))
    rows = C.describe(C.get_corpus("general-local"), DATA)
    read = {p.relative_to(DATA).as_posix() for p in opened if DATA in p.parents}
    assert read == {"wikitext-2-tokens/valid.txt", "glue/SST-2/train.tsv", "glue/CoLA/train.tsv", "glue/MRPC/train.tsv",
                    "glue/STS-B/train.tsv", "glue/RTE/train.tsv", "glue/WNLI/train.tsv"}
    # its size (the tokens depend on the tokenizer: 1,618,146 with minilm-l6's, docs/tasks.md)
    assert [(r["source"], r["lines"]) for r in rows] == [
        ("wikitext-2-tokens/valid.txt", 2461), ("sst2/train", 67349), ("cola/train", 8551), ("mrpc/train", 7336),
        ("stsb/train", 11498), ("rte/train", 4980), ("wnli/train", 1270)]
    assert C.total(rows, "words") == 1_336_776


@needs_data
def test_the_registered_corpus_splits_one_percent_out():
    train, held = C.split_lines(C.get_corpus("general-local"), DATA)
    assert len(train) + len(held) == 103_445
    assert 0.008 < len(held) / (len(train) + len(held)) < 0.012
    assert isinstance(C.pack_encoder_blocks(WordTokenizer(), held[:50], 16).input_ids, torch.Tensor)

"""From examples to batches: a fixed subsample, the seeded selection split, tokenisation, length-grouped batches.

Dynamic padding with length-grouped batches was 1.8x faster than padding to 128 on a 2-core CPU: batches hold
examples of similar length, so little compute is spent on padding, while the order stays random between batches.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .lm import LMBlocks, collate_blocks
from .qa import QAWindows
from .tasks import Example

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the batch keys a model's forward takes

SUBSAMPLE_SEED = 20240611  # fixed: --max-train-examples picks the same rows for every seed, objective and teacher


def subsample(examples: list[Example], n: int | None) -> list[Example]:
    if n is None or n >= len(examples):
        return examples
    keep = np.sort(np.random.RandomState(SUBSAMPLE_SEED).permutation(len(examples))[:n])
    return [examples[i] for i in keep]


NO_CLASS = -100  # the label of a transfer-set example of a classification task (no target; what torch's CE ignores)


def unlabelled(examples: list[Example], regression: bool) -> list[Example]:
    """The examples with their labels dropped (a transfer set, which only the teacher labels): ``NO_CLASS``, or NaN
    for a regression score; the task loss skips them (:meth:`distilbench.objectives.base.Objective.task_loss`)."""
    return [dataclasses.replace(e, label=float("nan") if regression else NO_CLASS) for e in examples]


def transfer_set(examples: list[Example], labelled: int, n: int) -> list[Example]:
    """``n`` examples of the same fixed sample beyond the first ``labelled`` (:func:`subsample` of ``labelled + n``
    holds ``subsample`` of ``labelled``), in file order."""
    kept = {e.idx for e in subsample(examples, labelled)}
    return [e for e in subsample(examples, labelled + n) if e.idx not in kept]


def selection_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out a seeded slice of train for selection (best epoch, search): dev stays untouched until the end."""
    order = np.random.RandomState(seed).permutation(len(examples))
    n_select = max(1, int(round(fraction * len(examples))))
    held = set(order[:n_select].tolist())
    train = [e for i, e in enumerate(examples) if i not in held]
    select = [e for i, e in enumerate(examples) if i in held]
    return train, select


def fingerprint(examples: Sequence[Example]) -> str:
    """Content hash of a list of examples: cache keys change when the data does."""
    h = hashlib.sha256()
    for e in examples:
        if hasattr(e, "qid"):  # an extractive QA question (data.qa_tasks.QAExample)
            answers = "\t".join(f"{a.start}:{a.text}" for a in e.answers)
            h.update(f"{e.idx}\t{e.qid}\t{e.question}\t{e.context}\t{answers}\n".encode())
            continue
        h.update(f"{e.idx}\t{e.text_a}\t{e.text_b}\t{e.label}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class Encoded:
    """One tokenised split. ``rows[i]`` holds the token ids of ``examples[i]`` for one tokenizer."""

    examples: list[Example]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    pad_id: int

    def __len__(self) -> int:
        return len(self.examples)

    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids])

    def subset(self, positions: Sequence[int]) -> "Encoded":
        return Encoded([self.examples[i] for i in positions], [self.input_ids[i] for i in positions],
                       [self.token_type_ids[i] for i in positions] if self.token_type_ids is not None else None, self.pad_id)


def holdout_positions(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """Split positions 0..n-1 (seeded) into a kept part and a held-out part of ``round(share * n)`` (at least one)."""
    order = np.random.RandomState((seed * 7_919 + 17) % 2**32).permutation(n)
    n_out = min(n - 1, max(1, int(round(share * n))))
    return sorted(order[n_out:].tolist()), sorted(order[:n_out].tolist())


def encode(tokenizer, examples: list[Example], max_length: int) -> Encoded:
    a = [e.text_a for e in examples]
    b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_length)
    return Encoded(examples, enc["input_ids"], enc.get("token_type_ids"), tokenizer.pad_token_id)


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group: int = 50) -> list[list[int]]:
    """Shuffle, sort by length inside mega-batches of ``group`` batches, then shuffle the batch order.

    Deterministic in (seed, epoch): the data order is part of what a seed fixes for every objective.
    """
    rng = np.random.RandomState((seed * 1_000_003 + epoch) % 2**32)
    order = rng.permutation(len(lengths))
    batches = []
    mega = batch_size * group
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Evaluation needs no randomness: sort by length for the least padding."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(enc: Encoded | QAWindows, ids: list[int], regression: bool, teacher_enc: Encoded | None = None) -> dict[str, torch.Tensor]:
    """A padded batch. ``idx`` is each example's row in its data file: stable across seeds, the key of teacher-output caches.

    When the teacher has its own tokenizer, its inputs travel under ``teacher_*`` keys. Extractive QA windows are
    batched by :func:`collate_windows`.
    """
    own = COLLATE.get(type(enc))
    if own is not None:  # another family's encoding batches itself
        return own(enc, ids)
    rows = [enc.input_ids[i] for i in ids]
    batch = {"input_ids": _pad(rows, enc.pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0)}
    if enc.token_type_ids is not None:
        batch["token_type_ids"] = _pad([enc.token_type_ids[i] for i in ids], 0)
    labels = [enc.examples[i].label for i in ids]
    batch["labels"] = torch.tensor(labels, dtype=torch.float if regression else torch.long)
    batch["idx"] = torch.tensor([enc.examples[i].idx for i in ids], dtype=torch.long)
    if teacher_enc is not None:
        t_rows = [teacher_enc.input_ids[i] for i in ids]
        batch["teacher_input_ids"] = _pad(t_rows, teacher_enc.pad_id)
        batch["teacher_attention_mask"] = _pad([[1] * len(r) for r in t_rows], 0)
        if teacher_enc.token_type_ids is not None:
            batch["teacher_token_type_ids"] = _pad([teacher_enc.token_type_ids[i] for i in ids], 0)
    return batch


def collate_windows(windows: QAWindows, ids: list[int]) -> dict[str, torch.Tensor]:
    """A padded batch of extractive QA windows: the model inputs, ``labels`` ``[B, 2]`` (start, end token positions;
    0 = the classification token: no answer in the window) and ``idx``, each window's stable number in its split's
    windows (the key of teacher-output caches). Teacher and student share the tokenisation: span scores are compared
    position by position."""
    rows = [windows.input_ids[i] for i in ids]
    batch = {"input_ids": _pad(rows, windows.pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0)}
    if windows.token_type_ids is not None:
        batch["token_type_ids"] = _pad([windows.token_type_ids[i] for i in ids], 0)
    batch["labels"] = torch.tensor([[windows.start_positions[i], windows.end_positions[i]] for i in ids], dtype=torch.long)
    batch["idx"] = torch.tensor([windows.window_idx[i] for i in ids], dtype=torch.long)
    return batch


# how a family's own encoding type makes a batch (extractive QA windows; causal-LM blocks, labels = input ids); any
# other encoding is a sentence task's ``Encoded``
COLLATE = {QAWindows: collate_windows, LMBlocks: collate_blocks}


class BatchLoader:
    """An iterable of padded batches over precomputed index lists (no worker processes: tokens are in memory)."""

    def __init__(self, enc: Encoded, batches: list[list[int]], regression: bool, teacher_enc: Encoded | None = None):
        self.enc, self.batches, self.regression, self.teacher_enc = enc, batches, regression, teacher_enc

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for ids in self.batches:
            yield collate(self.enc, ids, self.regression, self.teacher_enc)

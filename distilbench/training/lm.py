"""Causal language models: perplexity over a split's evaluation windows, and the checks a causal-LM run makes before
anything is trained (a corpus at least one block long).

Perplexity = ``exp(sum of next-token NLL / scored tokens)`` over every window of the split (a token-weighted mean; see
:mod:`distilbench.data.lm` for the windows and which tokens each scores). The stride is returned with the score, so
that whatever stores it can say how it was measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..data.lm import IGNORE, Window, corpus_ids, eval_windows, next_token_nll, pack_blocks, perplexity
from ..data.tasks import Example, Task
from ..errors import UsageError
from ..models.loading import load_tokenizer


@dataclass(frozen=True)
class LMScore:
    perplexity: float
    nll: float  # mean next-token NLL (nats)
    tokens: int  # tokens scored
    windows: int
    max_length: int
    stride: int  # = max_length: non-overlapping blocks; smaller: a sliding window

    def as_metrics(self) -> dict[str, float | int]:
        return {"score": self.perplexity, "perplexity": self.perplexity, "nll": self.nll, "tokens": self.tokens,
                "eval_stride": self.stride, "eval_max_length": self.max_length}


def _batch(windows: Sequence[Window], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE on padding and context-only tokens)."""
    width = max(len(w.input_ids) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(windows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, w in enumerate(windows):
        n = len(w.input_ids)
        ids[row, :n] = torch.tensor(w.input_ids)
        labels[row, :n] = torch.tensor(w.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


@torch.no_grad()
def evaluate_perplexity(model, ids: Sequence[int], max_length: int, stride: int | None = None, batch_size: int = 8,
                        pad_id: int = 0, where: str = "the corpus") -> LMScore:
    """Perplexity of a causal LM (``model(input_ids=, attention_mask=).logits`` ``[B, L, V]``) over the token ids of a
    whole split, in windows of ``max_length`` every ``stride`` tokens (default: non-overlapping blocks)."""
    windows = eval_windows(ids, max_length, stride, where)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = _batch(windows[start:start + batch_size], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, count = next_token_nll(logits, batch["labels"])
        total, n = total + float(nll), n + count
    model.train(was_training)
    return LMScore(perplexity(total, n), total / n, n, len(windows), max_length,
                   max_length if stride is None else stride)


def check_corpus(task: Task, tokenizer, splits: dict[str, list[Example]], max_length: int) -> dict[str, list[int]]:
    """Each split's token ids, refusing (one line, :class:`DataError`) a split shorter than one block."""
    ids = {}
    for split, lines in splits.items():
        ids[split] = corpus_ids(tokenizer, lines)
        pack_blocks(ids[split], max_length, where=f"task {task.name}'s {split} split")
    return ids


def refuse_lm_run(task: Task, cfg, teacher_config, train: list[Example], dev: list[Example] | None) -> None:
    """A causal-LM task's bad input, refused with one line before anything is trained: a classification model as the
    teacher, a split shorter than one ``--max-length`` block. Then the run itself is refused: `distilbench run` does
    not train language models yet (issue #21, stage C: the harness path for ``AutoModelForCausalLM``)."""
    archs = getattr(teacher_config, "architectures", None) or []  # a config built in code names none: not refused
    not_causal = [a for a in archs if not a.endswith(("LMHeadModel", "ForCausalLM"))]
    if not_causal:
        raise UsageError(f"task {task.name} is causal language modelling, but teacher {cfg.teacher} is a "
                         f"{', '.join(not_causal)}: give a causal LM (AutoModelForCausalLM: GPT-2, Llama, ...)")
    check_corpus(task, load_tokenizer(cfg.teacher), {"train": train, **({"dev": dev} if dev else {})}, cfg.max_length)
    raise UsageError(f"task {task.name} is causal language modelling, which `distilbench run` does not train yet "
                     "(issue #21: the objectives and perplexity exist, the training path does not)")

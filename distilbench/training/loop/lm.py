"""Causal language models: perplexity over a split's evaluation windows (and over packed blocks, for selection), and
the checks a causal-LM run makes before anything is trained.

Perplexity = ``exp(sum of next-token NLL / scored tokens)`` over every window of the split (a token-weighted mean; see
:mod:`distilbench.data.lm` for the windows and which tokens each scores). The stride is returned with the score, so
that whatever stores it can say how it was measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...data.lm import (
    IGNORE,
    LMBlocks,
    Window,
    collate_blocks,
    corpus_ids,
    eval_windows,
    next_token_nll,
    pack_blocks,
    perplexity,
)
from ...data.tasks import Example, Task
from ...errors import UsageError
from ...models.loading import load_tokenizer
from ...models.scratch import is_scratch


@dataclass(frozen=True)
class LMScore:
    perplexity: float
    nll: float  # mean next-token NLL (nats)
    tokens: int  # tokens scored
    windows: int
    max_length: int
    stride: int  # = max_length: non-overlapping blocks; smaller: a sliding window
    window_nll: tuple[float, ...] = ()  # per evaluation window: summed NLL of its scored tokens (per-example values)
    window_tokens: tuple[int, ...] = ()  # per evaluation window: tokens it scores

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
    sums, counts = [], []
    for start in range(0, len(windows), batch_size):
        batch = _batch(windows[start:start + batch_size], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row in range(logits.shape[0]):
            nll, count = next_token_nll(logits[row:row + 1], batch["labels"][row:row + 1])
            sums.append(float(nll))
            counts.append(count)
    model.train(was_training)
    total, n = sum(sums), sum(counts)
    return LMScore(perplexity(total, n), total / n, n, len(windows), max_length,
                   max_length if stride is None else stride, tuple(sums), tuple(counts))


@torch.no_grad()
def evaluate_blocks(model, blocks: LMBlocks, batch_size: int, accelerator) -> dict[str, float]:
    """Perplexity over packed blocks (the selection split's, during training): ``score`` = perplexity, lower is
    better; each block's first token has no context in its block and is not scored."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = collate_blocks(blocks, list(range(start, min(start + batch_size, len(blocks)))))
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, count = next_token_nll(logits, batch["labels"])
        total, n = total + float(nll), n + count
    model.train(was_training)
    return {"score": perplexity(total, n), "perplexity": perplexity(total, n), "nll": total / max(n, 1)}



def check_corpus(task: Task, tokenizer, splits: dict[str, list[Example]], max_length: int) -> dict[str, list[int]]:
    """Each split's token ids, refusing (one line, :class:`DataError`) a split shorter than one block."""
    ids = {}
    for split, lines in splits.items():
        ids[split] = corpus_ids(tokenizer, lines)
        pack_blocks(ids[split], max_length, where=f"task {task.name}'s {split} split")
    return ids


def check_lm_run(task: Task, cfg, teacher_config, train: list[Example], dev: list[Example] | None, objectives,
                 student: str | None) -> None:
    """A causal-LM run's bad input, refused with one line (exit 2) before anything is trained: a model that is not a
    causal LM as the teacher; a split shorter than one ``--max-length`` block (checked here with the teacher's
    tokenizer, or, for a from-scratch teacher not trained yet, when its tokenizer exists); a pretrained student whose
    tokenizer differs from the teacher's under an objective that reads the teacher (every one compares next-token
    distributions position by position); a multi-teacher objective (not supported for language models)."""
    archs = getattr(teacher_config, "architectures", None) or []  # a config built in code names none: not refused
    not_causal = [a for a in archs if not a.endswith(("LMHeadModel", "ForCausalLM"))]
    if not_causal:
        raise UsageError(f"task {task.name} is causal language modelling, but teacher {cfg.teacher} is a "
                         f"{', '.join(not_causal)}: give a causal LM (AutoModelForCausalLM: GPT-2, Llama, ...), or "
                         "--teacher scratch:gpt2-tiny to train one from scratch")
    multi = [o.name for o in objectives if o.multi_teacher]
    if multi:
        raise UsageError(f"objective {multi[0]} (a teacher team) does not train language models; use kd, kd-reverse, "
                         "gkd-jsd, lwd or ted")
    teacher_tok = None if is_scratch(cfg.teacher) else load_tokenizer(cfg.teacher)
    if student is not None:
        if is_scratch(cfg.teacher) or student_tokenizer_differs(teacher_tok, student):
            if any(o.uses_teacher for o in objectives):
                raise UsageError(f"objective {objectives[0].name} compares next-token distributions position by position, "
                                 f"but student {student} and teacher {cfg.teacher} have different tokenizers; use a "
                                 "student initialised from the teacher's layers (--init first-k, ...)")
    if teacher_tok is not None:
        check_corpus(task, teacher_tok, {"train": train, **({"dev": dev} if dev else {})}, cfg.max_length)


def student_tokenizer_differs(teacher_tok, student: str) -> bool:
    return teacher_tok.get_vocab() != load_tokenizer(student).get_vocab()


def refuse_lm_family(task: Task, cfg) -> None:
    """A from-scratch teacher (``scratch:SIZE``) is a causal LM: refused for any other task family."""
    if is_scratch(cfg.teacher) and not task.causal:
        raise UsageError(f"teacher {cfg.teacher} is a from-scratch causal LM; task {task.name} is {task.kind}")

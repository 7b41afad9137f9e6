"""Scoring an extractive QA model: its start and end scores on every window, the best legal span per question
(:func:`distilbench.data.qa_answers.best_answers`), then SQuAD's EM and F1 (:func:`~distilbench.data.qa_answers.score_answers`).
:func:`distilbench.training.loop.harness.evaluate` hands QA windows here, so the selection split scores spans like classes."""
from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ...config import RunConfig
from ...data.batching import BatchLoader, eval_batches
from ...data.qa import QAWindows
from ...data.qa_answers import QAPrediction, best_answers, score_answers
from ...data.qa_tasks import QATask
from ...objectives import Needs
from .outputs import model_outputs


@torch.no_grad()
def span_scores(model: nn.Module, windows: QAWindows, cfg: RunConfig,
                accelerator: Accelerator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per window, in window order: its start scores and its end scores, one per token (float32, unpadded)."""
    model.eval()
    model.to(accelerator.device)
    batches = eval_batches(windows.lengths(), cfg.eval_batch_size)
    start: list[np.ndarray] = [np.empty(0, np.float32)] * len(windows)
    end = list(start)
    for ids, batch in zip(batches, BatchLoader(windows, batches, False)):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logits = model_outputs(model, batch, Needs()).logits.float().cpu().numpy()  # [B, L, 2]
        for row, w in enumerate(ids):
            n = len(windows.input_ids[w])
            start[w], end[w] = logits[row, :n, 0], logits[row, :n, 1]
    return start, end


def predict_answers(model: nn.Module, windows: QAWindows, task: QATask, cfg: RunConfig,
                    accelerator: Accelerator) -> list[QAPrediction]:
    """One prediction per question of ``windows.examples``, with the task's n-best and maximum answer length."""
    start, end = span_scores(model, windows, cfg, accelerator)
    return best_answers(windows, start, end, task.n_best, task.max_answer_length)


def evaluate_spans(model: nn.Module, windows: QAWindows, task: QATask, cfg: RunConfig,
                   accelerator: Accelerator) -> dict[str, float]:
    """EM, F1 (v2.0: with the HasAns/NoAns breakdown and the best threshold) and ``score``, on the 0-1 scale."""
    return score_answers(task, windows.examples, predict_answers(model, windows, task, cfg, accelerator))

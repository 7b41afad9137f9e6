"""What a teacher computes, as the teacher caches need it: fine-tuning a teacher, its logits over a split, its outputs
on a batch. The runner builds one :class:`TeacherInference` per run and hands its methods down to
:func:`teacher.ensure_teacher`, :func:`teacher.teacher_logits` and :func:`teacher_cache.open_or_build`, which call
nothing above them."""
from __future__ import annotations

from typing import Callable

import torch
from accelerate import Accelerator
from torch import nn

from ...config import RunConfig
from ...data.batching import BatchLoader, Encoded, encode, eval_batches
from ...data.tasks import Example, Task
from ...models.inits import copy_layers, parse_init
from ...models.loading import load_task_model, load_tokenizer
from ...models.pooling import set_pooling
from ...objectives import Context, Needs, Outputs, get_objective
from ..loop.outputs import model_outputs
from .teacher import split_for_teacher, teacher_pooling
from ..loop.trainer import Trainer


class TeacherInference:
    """A run's teacher computations, at the run's precision and on its device. ``trainer``: the run's training (the
    teacher is fine-tuned through the same loop, progress display included, as its students)."""

    def __init__(self, cfg: RunConfig, task: Task, accelerator: Accelerator, trainer: Trainer, log: Callable[[str], None]):
        self.cfg, self.task, self.accelerator, self.trainer, self.log = cfg, task, accelerator, trainer, log

    def fine_tune(self, model_name: str, train_all: list[Example]) -> tuple[nn.Module, object, dict]:
        """``model_name`` (``NAME`` or ``NAME@INIT``, a truncated teacher) fine-tuned on the teacher's split of
        ``train_all``: the model, its tokenizer, and what its meta.json records of the training."""
        task, cfg = self.task, self.cfg
        train_part, select_part = split_for_teacher(cfg, train_all)
        base, _, init = model_name.partition("@")
        tokenizer = load_tokenizer(base)
        torch.manual_seed(cfg.teacher_seed)  # the new task head is random: the teacher seed fixes it
        net = load_task_model(base, task, attn_implementation=None)
        pooling = teacher_pooling(cfg, model_name, task)
        if pooling:  # its head reads this sentence representation; saved in its config, so the cached teacher keeps it
            set_pooling(net, pooling)
        if init:  # a truncated teacher: those layers of the pretrained model, then fine-tuned like any teacher
            net, mapping = copy_layers(net, parse_init(init, net.config.num_hidden_layers, cfg.student_layers).layers, cfg.teacher_seed)
            for line in mapping:
                self.log(f"  {model_name}: {line}")
        none = get_objective("none")(Context(task, cfg, [], net.config.hidden_size, None))
        result = self.trainer(net, none, None, self.encode(tokenizer, train_part),
                              self.encode(tokenizer, select_part), seed=cfg.teacher_seed,
                              epochs=cfg.teacher_epochs, lr=cfg.teacher_lr, label=f"teacher {model_name}",
                              micro_batch=cfg.teacher_micro_batch)
        return net, tokenizer, {"best_epoch": result.best_epoch, "select_score": result.best_select_score,
                                "history": result.history, "examples_per_s": result.examples_per_s}

    def encode(self, tokenizer, examples: list[Example]) -> Encoded:
        """Family hook: examples tokenised as this family's models read them."""
        return encode(tokenizer, examples, self.cfg.max_length)

    @torch.no_grad()
    def logits(self, net: nn.Module, enc: Encoded) -> torch.Tensor:
        """Family hook: ``net``'s logits for every example of ``enc``, in its order (float32, on the CPU)."""
        device = self.accelerator.device
        net.eval().to(device)
        batches = eval_batches(enc.lengths(), self.cfg.eval_batch_size)
        out = torch.zeros(len(enc), self.task.num_labels)
        for ids, batch in zip(batches, BatchLoader(enc, batches, self.task.regression)):
            batch = {k: v.to(device) for k, v in batch.items()}
            with self.accelerator.autocast():  # the run's precision (fp32: no-op)
                out[ids] = model_outputs(net, batch, Needs()).logits.float().cpu()
        return out

    @torch.no_grad()
    def outputs(self, net: nn.Module, needs: Needs, batch: dict) -> Outputs:
        """What ``needs`` asks of ``net`` on one batch, as the live teacher would compute it."""
        device = self.accelerator.device
        net.eval().to(device)
        with self.accelerator.autocast():  # the run's precision, as the live teacher would compute them (fp32: no-op)
            return model_outputs(net, {k: v.to(device) for k, v in batch.items()}, needs)

"""The objective contract: what every distillation objective is, and the hooks the harness calls.

An objective is a small ``nn.Module``. It receives the student's and the teacher's outputs and the batch and returns
the loss with its unweighted terms; it never owns a training loop. What it needs from the models is declared in
``needs`` (so the harness asks the models only for that, and can serve the teacher from a cache). Methods with
several stages (TED) declare them in ``stages()``; methods with several teachers (AutoSKD) pick one per step in
``choose_teacher()``. Its own learnable parameters (projections, filters) are the module's parameters: the harness
trains them with the student and never saves them with the student.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..tasks import Task


@dataclass(frozen=True)
class Needs:
    """What an objective reads from the model outputs."""

    logits: bool = True
    hidden_states: bool = False  # per-layer hidden states (embeddings first, as transformers returns them)
    attentions: bool = False  # post-softmax attention probabilities
    token_aligned: bool = False  # compares token positions: teacher and student must share a tokenizer


@dataclass
class Outputs:
    """Model outputs in one shape for every architecture; missing parts are None."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One stage of training. ``epochs=None`` means the run's ``--epochs``; ``train_student=False`` freezes the student
    (a stage that trains only the objective's own modules, e.g. TED's filters)."""

    name: str
    epochs: float | None = None
    train_student: bool = True


@dataclass
class Context:
    """What an objective may know when it is built: the task, the layer mapping, both models' sizes."""

    task: "Task"
    config: "RunConfig"
    layer_map: list[int]  # student layer k (1-based position k) learns from teacher layer layer_map[k-1] (1-based)
    student_hidden: int
    teacher_hidden: int | None
    num_teachers: int = 1


@dataclass
class LossOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]  # unweighted, for logging


class Objective(nn.Module):
    name: ClassVar[str]
    version: ClassVar[str]
    paper: ClassVar[str]  # short reference shown by `distilbench ls objectives`
    needs: ClassVar[Needs] = Needs()
    uses_teacher: ClassVar[bool] = True
    params: ClassVar[tuple[str, ...]] = ()  # RunConfig fields this objective reads: they enter the result's identity

    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx
        self.task = ctx.task

    def stages(self) -> list[Stage]:
        return [Stage("distil")]

    def choose_teacher(self, step: int) -> int:
        """Index of the teacher this step uses (multi-teacher objectives override)."""
        return 0

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, torch.Tensor], stage: Stage) -> LossOutput:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        return {"objective": self.name, "objective_version": self.version,
                **{p: getattr(self.ctx.config, p) for p in self.params}}

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for classification, MSE for regression (STS-B)."""
        if self.task.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

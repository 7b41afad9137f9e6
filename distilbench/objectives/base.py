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
    attentions: bool = False  # per-layer attention internals: pre-softmax scores, probabilities, per-head Q/K/V
    token_aligned: bool = False  # compares token positions: teacher and student must share a tokenizer


@dataclass
class Outputs:
    """Model outputs in one shape for every architecture; missing parts are None."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None  # [0] embeddings, [k] output of layer k: [B, L, d]
    attentions: list[dict[str, torch.Tensor]] | None = None  # per layer (0-based list): scores, probs [B,H,L,L]; q, k, v [B,H,L,d_h]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One stage of training.

    ``epochs``/``lr`` None mean the run's ``--epochs``/``--lr``. ``train_student=False`` freezes the student (a stage
    that trains only the objective's own modules, e.g. TED's filters); ``needs_student=False`` skips the student's
    forward pass altogether. A ``shared`` stage does not depend on the student's seed: the harness trains it once on
    the teacher's split with the teacher's seed, caches the objective's state beside the teacher, and every seed
    reuses it (TED's Stage I).
    """

    name: str
    epochs: float | None = None
    train_student: bool = True
    needs_student: bool = True
    lr: float | None = None
    shared: bool = False


@dataclass
class Context:
    """What an objective may know when it is built: the task, the layer mapping, both models' sizes."""

    task: "Task"
    config: "RunConfig"
    layer_map: list[tuple[int, int]]  # (student layer, teacher layer) pairs, 1-based, as the papers count
    student_hidden: int
    teacher_hidden: int | None
    num_teachers: int = 1
    student_heads: int | None = None
    teacher_heads: int | None = None
    teacher_model: Any = None  # for objectives that build modules from the teacher's layers (TED's `layer` filters)


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

    def begin_stage(self, stage: Stage) -> None:
        """Called by the harness before each stage: set ``requires_grad`` on the objective's own modules for it."""

    def stage_identity(self, stage: Stage) -> dict[str, Any]:
        """What a shared stage's cached result depends on, besides the teacher and the data."""
        return self.identity()

    def report(self) -> dict[str, Any]:
        """Facts about the objective stored with each result (e.g. TED's filter parameter count)."""
        return {}

    def choose_teacher(self, step: int) -> int:
        """Index of the teacher this step uses (multi-teacher objectives override)."""
        return 0

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, torch.Tensor], stage: Stage) -> LossOutput:
        raise NotImplementedError

    @classmethod
    def param_values(cls, config: "RunConfig") -> dict[str, Any]:
        """The values of the config fields this objective reads, defaults resolved: part of each result's identity."""
        return {p: getattr(config, p) for p in cls.params}

    def identity(self) -> dict[str, Any]:
        return {"objective": self.name, "objective_version": self.version, **self.param_values(self.ctx.config)}

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The prediction-layer term and its scale: KL(softmax(z_T/T) || softmax(z_S/T)) averaged over the batch, scaled by
        T^2 (Hinton et al. 2015); for regression, MSE between the outputs, scale 1."""
        zs, zt = student_logits.float(), teacher_logits.detach().float()  # the teacher never learns
        if self.task.regression:
            return F.mse_loss(zs, zt), 1.0
        t = self.ctx.config.temperature
        kl = F.kl_div(F.log_softmax(zs / t, -1), F.log_softmax(zt / t, -1), reduction="batchmean", log_target=True)
        return kl, t * t

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for classification, MSE for regression (STS-B)."""
        if self.task.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

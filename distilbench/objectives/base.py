"""The objective contract: what every distillation objective is, and the hooks the harness calls.

An objective is a small ``nn.Module``. It receives the student's and the teacher's outputs and the batch and returns
the loss with its unweighted terms; it never owns a training loop. What it needs from the models is declared in
``needs`` (so the harness asks the models only for that, and can serve the teacher from a cache). Methods with
several stages (TED) declare them in ``stages()``; methods with several teachers (AutoSKD) pick one per step in
``choose_teacher()``. Its own learnable parameters (projections, filters) are the module's parameters: the harness
trains them with the student and never saves them with the student.

A built-in objective is registered where it is defined, with ``@register_objective(name)`` (the shape of the init
strategies' ``@INITS.register``); third-party ones through the ``distilbench.objectives`` entry-point group.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import NO_CLASS
from ..data.lm import next_token_nll
from ..models.pooling import sentence_representation
from ..options import Option, declare_options
from ..plugins import Registry
from .distributions import forward_kl
from .functional import logit_kl, span_kl

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data.tasks import Task


MLM_MASK = "mlm_mask"  # batch key of task-agnostic KD: the masked positions [B, L] whose MLM predictions are compared

# the prediction-layer term's options (``soft_loss``): every objective with a KD term declares them
TEMPERATURE = Option("temperature", float, 2.0, "softmax temperature of the prediction-layer (KD) term.", low=0.0,
                     low_open=True, search=("float", 1.0, 8.0, "log"))
ALPHA_KD = Option("alpha_kd", float, 1.0, "weight of the prediction-layer KD term: loss = CE + alpha_kd * T^2 * KL.",
                  low=0.0, search=("float", 0.1, 10.0, "log"))
PREDICTION_OPTIONS = (TEMPERATURE, ALPHA_KD)


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
    reuses it (TED's Stage I). ``holdout > 0`` splits the stage's training data (seeded) into a part the student trains
    on and a held-out part the objective's :meth:`Objective.outer_step` draws batches from (AutoSKD's validation subset).
    """

    name: str
    epochs: float | None = None
    train_student: bool = True
    needs_student: bool = True
    lr: float | None = None
    shared: bool = False
    holdout: float = 0.0  # share of the stage's training data held out for the objective's outer step (AutoSKD's θ)
    title: str = ""  # how progress lines name the stage beside ``name`` (TED: "Stage I"); display only, never a key


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
    seed: int = 0  # the run's seed (objectives with random parts of their own draw them from it)
    team: list[dict[str, Any]] = field(default_factory=list)  # multi-teacher objectives: per teacher name, parameters, scores
    student_params: int | None = None
    pooling: str = "cls"  # the student's sentence representation (distilbench.models.pooling): cls | mean
    teacher_pooling: str = "cls"  # the teacher's


@dataclass
class StepContext:
    """What :meth:`Objective.outer_step` may use: the unwrapped student, this step's batch, any teacher's outputs on any
    batch, and the next batch of the stage's held-out share (see ``Stage.holdout``)."""

    step: int
    total_steps: int
    student: nn.Module
    batch: dict[str, torch.Tensor]
    teacher: Any  # (batch, teacher index) -> Outputs
    holdout: Any  # () -> batch of the held-out share; raises when the stage holds nothing out
    outputs: Any = None  # this step's teacher outputs (Outputs, or a list when several teachers were chosen)
    chosen: Any = None  # what choose_teacher returned this step


@dataclass
class LossOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]  # unweighted, for logging


class Objective(nn.Module):
    """A distillation objective: ``forward`` is the loss; the hooks below have no-op defaults, and the training code
    calls them at named points, never naming an objective:

    - ``stages()`` (and ``Stage.shared``/``holdout``), ``begin_stage()``, ``stage_identity()``: per stage in
      :func:`distilbench.training.loop.harness.train` (TED's two stages, its shared Stage I; AutoSKD's held-out half);
    - ``choose_teacher()``, then ``outer_step()``: each step that reads a teacher, in ``harness._loss`` (AutoSKD's
      teacher draw and θ update);
    - ``candidates()``, ``use_candidate()``, ``candidate_done()``, ``summary()``: after training, in
      ``Runner.fit``/``training.runs.candidates.retrain_candidates`` (AutoSKD's candidate retraining); ``report()``: into each row.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    paper: ClassVar[str]  # short reference shown by `distilbench ls objectives`
    needs: ClassVar[Needs] = Needs()
    uses_teacher: ClassVar[bool] = True
    data_parallel: ClassVar[bool] = True  # False: state of its own that data-parallel processes would not share
    multi_teacher: ClassVar[bool] = False  # learns from a team (--teachers), each step's teacher(s) from choose_teacher()
    separable: ClassVar[bool] = False  # the loss is a mean of per-example losses, so a batch may run as micro-batches
    teacher_cache: ClassVar[bool] = True  # the teacher's outputs may come from the on-disk cache (False: run it every step)
    reads_sentence: ClassVar[bool] = False  # its intermediate term reads the models' sentence representation (--pooling)
    # its own options (flags, YAML keys, search ranges), added to those of its base classes; a subclass may declare
    # one again to change its help or search range. Registered with the objective (options.declare_options).
    options: ClassVar[tuple[Option, ...]] = ()
    option_groups: ClassVar[dict[str, str]] = {}  # `--help` sections its options introduce: name -> description
    reads: ClassVar[tuple[str, ...]] = ()  # run fields it reads besides its options (layer_map, teachers)
    # what its results depend on: ``reads`` and its options along the class hierarchy (set by __init_subclass__);
    # their values enter each result's identity
    params: ClassVar[tuple[str, ...]] = ()
    # what `distilbench search` tunes besides the options' own ``search`` ranges: run fields -> ("float", low, high[,
    # "log"]) | ("int", low, high) | ("categorical", choices); merged along the class hierarchy
    search_space: ClassVar[dict[str, tuple]] = {"lr": ("float", 1e-5, 1e-4, "log"), "epochs": ("int", 1, 4),
                                                "batch_size": ("categorical", (16, 32))}

    def __init__(self, ctx: Context):
        super().__init__()
        self.ctx = ctx
        self.task = ctx.task

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.params = tuple(dict.fromkeys(name for k in reversed(cls.__mro__)
                                         for name in (*(o.name for o in vars(k).get("options", ())), *vars(k).get("reads", ()))))

    @classmethod
    def declared_reads(cls) -> tuple[str, ...]:
        """The run fields it reads besides its options, along the class hierarchy, each once."""
        return tuple(dict.fromkeys(r for klass in reversed(cls.__mro__) for r in vars(klass).get("reads", ())))

    @classmethod
    def declared_options(cls) -> list[Option]:
        """Its options along the class hierarchy, each once, as the most derived class declares it."""
        merged: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            merged.update({o.name: o for o in vars(klass).get("options", ())})
        return list(merged.values())

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

    def summary(self) -> str | None:
        """A line or two printed after training (AutoSKD: θ per phase, the candidates, the choice). Default: none."""
        return None

    def choose_teacher(self, step: int, total_steps: int) -> int | list[int]:
        """Index of the teacher this step uses, or a list of indices when the step needs several teachers' outputs
        (the objective then receives a list of Outputs). Multi-teacher objectives override; called first in each step."""
        return 0

    def outer_step(self, ctx: StepContext) -> dict[str, float]:
        """Called each step that reads a teacher, after the teacher is chosen and before the student's loss: an
        outer-level update of the objective's own variables (AutoSKD's θ). Returns values to log. Default: nothing."""
        return {}

    def candidates(self) -> list[Any]:
        """After training: configurations to retrain a fresh student with, the best kept on the selection split
        (AutoSKD's candidate distributions). Default: none, the trained student is the result."""
        return []

    def use_candidate(self, index: int, candidate: Any) -> None:
        """Switch to candidate ``index`` before the harness retrains a fresh student with it."""

    def candidate_done(self, index: int, select_score: float) -> None:
        """The selection-split score the student retrained with candidate ``index`` reached."""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, torch.Tensor], stage: Stage) -> LossOutput:
        raise NotImplementedError

    def label_free(self, student: Outputs, teacher: Outputs, batch: dict[str, torch.Tensor]) -> LossOutput:
        """The loss without labels, for task-agnostic distillation (`distilbench pretrain`): an objective that has one
        overrides this (the layer objectives' intermediate term; KD's on the MLM head, at the masked positions
        ``batch[MLM_MASK]``). Default: none (:func:`distilbench.objectives.layerwise.without_labels` says why)."""
        raise NotImplementedError(f"objective {self.name} has no loss without labels")

    @classmethod
    def check_options(cls, config: "RunConfig", task: "Task") -> None:
        """Refuse, with one line (``UsageError``), a combination of this objective's options that it cannot honour,
        before anything runs or is written; a combination is honoured or refused, never silently changed."""

    @classmethod
    def space(cls) -> dict[str, tuple]:
        """The full search space: every ``search_space`` of the class hierarchy, subclasses last, then the options'
        ``search`` ranges."""
        merged: dict[str, tuple] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("search_space", {}))
        merged.update({o.name: o.search for o in cls.declared_options() if o.search})
        return merged

    @classmethod
    def param_values(cls, config: "RunConfig") -> dict[str, Any]:
        """The values of the config fields this objective reads, defaults resolved: part of each result's identity."""
        return {p: getattr(config, p) for p in cls.params}

    def identity(self) -> dict[str, Any]:
        return {"objective": self.name, "objective_version": self.version, **self.param_values(self.ctx.config)}

    def sentence(self, h: torch.Tensor, batch: dict, teacher: bool = False) -> torch.Tensor:
        """The model's sentence representation of hidden states ``h`` [B, L, d] -> [B, d]: its first token or the mean
        over the batch's real tokens, as the student's (or the teacher's) pooling says (``Context.pooling``)."""
        mask = batch.get("teacher_attention_mask", batch.get("attention_mask")) if teacher else batch.get("attention_mask")
        return sentence_representation(h, mask, self.ctx.teacher_pooling if teacher else self.ctx.pooling)

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """The prediction-layer term and its scale: KL(softmax(z_T/T) || softmax(z_S/T)) averaged over the batch, scaled by
        T^2 (Hinton et al. 2015); for regression, MSE between the outputs, scale 1. Extractive QA: the same KL on the
        start and on the end distributions over each window's real tokens (``mask``, the attention mask), averaged over
        the two (:func:`.functional.span_kl`). Token logits ``[B, L, V]`` (causal LM): the KL averaged over the real
        positions of ``mask`` ``[B, L]`` (:func:`.distributions.forward_kl`). Classification ignores ``mask``."""
        if self.task.regression:
            return F.mse_loss(student_logits.float(), teacher_logits.detach().float()), 1.0  # the teacher never learns
        t = self.ctx.config.temperature
        if self.task.span_output:  # before the shape test: span scores [B, L, 2] are 3-d too
            return span_kl(student=student_logits, teacher=teacher_logits, mask=_span_mask(mask), temperature=t), t * t
        if student_logits.dim() == 3:
            return forward_kl(student=student_logits, teacher=teacher_logits, mask=mask, temperature=t), t * t
        return logit_kl(student=student_logits, teacher=teacher_logits, temperature=t), t * t

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy for classification, MSE for regression (STS-B). Extractive QA: cross-entropy of the start and
        of the end position over each window's real tokens (``mask``), averaged over the two (labels ``[B, 2]``). Token
        logits ``[B, L, V]`` (causal LM): the mean next-token NLL over the real targets (labels -100 are none;
        :func:`distilbench.data.lm.next_token_nll`). Sentence tasks: examples without a label (a transfer set's:
        ``NO_CLASS``, or NaN for a score) are left out; a batch with none labelled adds 0 (the gradient stays defined)."""
        if self.task.sentence_level and labels.dim() == 1:  # one label per example
            known = ~torch.isnan(labels) if self.task.regression else labels != NO_CLASS
            if not bool(known.all()):
                if not bool(known.any()):
                    return logits.float().sum() * 0.0
                logits, labels = logits[known], labels[known]
        if self.task.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        if self.task.span_output:
            scores = torch.where(_span_mask(mask).bool()[:, :, None], logits.float(), torch.finfo(torch.float32).min)
            return (F.cross_entropy(scores[..., 0], labels[:, 0]) + F.cross_entropy(scores[..., 1], labels[:, 1])) / 2
        if logits.dim() == 3:
            total, n = next_token_nll(logits, labels)
            return total / max(n, 1)
        return F.cross_entropy(logits.float(), labels)


def _span_mask(mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:  # scores at padded positions would enter the softmax: refused, never guessed from values
        raise ValueError("extractive QA losses need the attention mask: pass mask=batch['attention_mask']")
    return mask


def declare(cls: type[Objective]) -> type[Objective]:
    """Declare ``cls``'s options and their `--help` sections (options.declare_options); repeating it is harmless."""
    groups = {g: d for k in reversed(cls.__mro__) for g, d in vars(k).get("option_groups", {}).items()}
    declare_options(cls.declared_options(), groups)
    return cls


# a third-party objective (an entry point, resolved on first use) has its options declared when it is resolved
OBJECTIVES: Registry[type[Objective]] = Registry("objective", on_load=declare)
O = TypeVar("O", bound=type[Objective])




def register_objective(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[O], O]:
    """Class decorator: register an ``Objective`` subclass as ``--objective name`` (and its ``aliases``).

    The name is written once, here: the decorator sets ``cls.name``, which enters every result's identity. A class that
    also sets ``name`` itself must set the same one; a name or alias taken twice is refused (``Registry``)."""

    def add(cls: O) -> O:
        if not (isinstance(cls, type) and issubclass(cls, Objective)):
            raise TypeError(f"@register_objective({name!r}) decorates Objective subclasses, not {cls!r}")
        if vars(cls).get("name", name) != name:
            raise ValueError(f"@register_objective({name!r}) on {cls.__name__}, whose name is {vars(cls)['name']!r}")
        cls.name = name
        declare(cls)
        OBJECTIVES.register(name, cls, aliases=aliases)
        return cls

    return add

"""Intermediate-layer objectives: the shared frame, and ``+`` combinations of them.

Every intermediate objective also carries the prediction-layer term, as paper 002 does. Two schedules:

* ``joint`` (default): ``L = CE + alpha_kd * T^2 * KL(pred) + beta * I``, one stage;
* ``sequential`` (paper 002 §4, TinyBERT's procedure): stage ``intermediate`` minimises ``I`` alone for ``--epochs``,
  then stage ``prediction`` minimises ``CE + alpha_kd * T^2 * KL(pred)`` for ``--epochs``; the best epoch is chosen in
  the last stage.

The intermediate term is the unweighted sum over the layer pairs ``ctx.layer_map`` ((student layer, teacher layer),
1-based)::

    I = sum_{k, (s, t) in enumerate(layer_map)} pair_loss(student, teacher, s, t, k, batch)

The loop lives here, once: a subclass writes ``pair_loss()`` for one pair (``k`` indexes its per-pair modules, e.g.
the projection ``W_k``); a term that is not such a sum overrides ``intermediate()`` instead. A combination such as
``att-kl+0.5*hid-seq`` is the weighted sum of its parts' intermediate terms plus one prediction term; each part's term
is logged.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import UsageError
from ..options import Option
from .base import PREDICTION_OPTIONS, Context, LossOutput, Needs, Objective, Outputs, Stage
from .distributions import token_mask


BETA = Option("beta", float | None, None, "weight of the intermediate-layer term(s) of layer objectives (joint schedule); "
              "default: the objective's own (1.0; TED 100).", low=0.0, search=("float", 0.1, 100.0, "log"))
SCHEDULE = Option("schedule", str, "joint", "layer objectives: joint (CE + KD + beta*intermediate) | sequential "
                  "(intermediate, then prediction layer; --epochs each, Wang et al. 2023).", choices=("joint", "sequential"))


class LayerObjective(Objective):
    options = (*PREDICTION_OPTIONS, BETA, SCHEDULE)
    reads = ("layer_map",)
    default_beta = 1.0  # the weight of the intermediate term when --beta is not given

    @classmethod
    def beta_default(cls, config) -> float:
        """The weight of the intermediate term when ``--beta`` is not given (an objective may choose it by task)."""
        return cls.default_beta

    @classmethod
    def param_values(cls, config) -> dict:
        values = super().param_values(config)
        values["beta"] = cls.beta_default(config) if config.beta is None else config.beta
        return values

    @property
    def beta(self) -> float:
        return self.param_values(self.ctx.config)["beta"]

    def intermediate(self, student: Outputs, teacher: Outputs, batch: dict) -> torch.Tensor:
        """The unweighted intermediate term ``I``: the sum of :meth:`pair_loss` over the layer pairs, in float32."""
        # on the outputs' device; a model without a head (task-agnostic distillation) has no logits
        ref = student.logits if student.logits is not None else next(v for v in batch.values() if torch.is_tensor(v))
        total = ref.new_zeros((), dtype=torch.float32)
        for k, (s, t) in enumerate(self.ctx.layer_map):
            total = total + self.pair_loss(student, teacher, s, t, k, batch)
        return total

    def pair_loss(self, student: Outputs, teacher: Outputs, s: int, t: int, k: int, batch: dict) -> torch.Tensor:
        """The loss of one layer pair: student layer ``s`` against teacher layer ``t`` (1-based), the ``k``-th pair."""
        raise NotImplementedError(f"{type(self).__name__} must define pair_loss() or intermediate()")

    def intermediate_terms(self, student: Outputs, teacher: Outputs, batch: dict) -> dict[str, torch.Tensor]:
        return {self.name: self.intermediate(student, teacher, batch)}

    def weighted_intermediate(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(terms.values())

    def label_free(self, student: Outputs, teacher: Outputs, batch: dict) -> LossOutput:
        """The loss without labels or a prediction layer: the (weighted) intermediate term alone, as task-agnostic
        distillation trains a student on unlabelled text (paper 002 §4; :mod:`distilbench.training.families.general`)."""
        terms = self.intermediate_terms(student, teacher, batch)
        return LossOutput(self.weighted_intermediate(terms), {k: v.detach() for k, v in terms.items()})

    def stages(self) -> list[Stage]:
        if self.ctx.config.schedule == "sequential":
            return [Stage("intermediate"), Stage("prediction")]
        return [Stage("distil")]

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict, stage: Stage) -> LossOutput:
        cfg = self.ctx.config
        terms: dict[str, torch.Tensor] = {}
        loss = student.logits.new_zeros(())
        if stage.name != "prediction":
            inter = self.intermediate_terms(student, teacher, batch)
            terms.update(inter)
            weighted = self.weighted_intermediate(inter)
            loss = loss + (weighted if stage.name == "intermediate" else self.beta * weighted)
        if stage.name != "intermediate":
            mask = batch.get("attention_mask")  # extractive QA and causal LM: the real tokens (classification ignores it)
            ce = self.task_loss(student.logits, batch["labels"], mask)
            soft, scale = self.soft_loss(student.logits, teacher.logits, mask)
            loss = loss + ce + cfg.alpha_kd * scale * soft
            terms.update(ce=ce, kd=soft)
        return LossOutput(loss, {k: v.detach() for k, v in terms.items()})

    # -- helpers for subclasses -----------------------------------------------------------------------------------
    def projections(self, always: bool = False) -> nn.ModuleList:
        """One learnable projection W (d_s -> d_t) per layer pair where hidden sizes differ (identity otherwise, unless
        ``always``). They train with the student and are never saved with it."""
        ds, dt = self.ctx.student_hidden, self.ctx.teacher_hidden
        return nn.ModuleList([nn.Linear(ds, dt, bias=False) if always or ds != dt else nn.Identity() for _ in self.ctx.layer_map])


# what only the labelled loss reads (the prediction-layer term's options, its joint weight, the schedule): a label-free
# loss ignores them, so task-agnostic distillation neither offers nor keys on them
PREDICTION_PART = ("temperature", "alpha_kd", "beta", "schedule")


PREDICTION_LAYER = "distils the prediction layer, which needs a teacher with an MLM head"


def without_labels(cls: type[Objective], mlm_head: bool | None = None) -> str | None:
    """Why ``cls`` cannot distil without labels (task-agnostic distillation, `distilbench pretrain`), or None when it
    can: a single-teacher objective with one stage and a :meth:`~.base.Objective.label_free` loss (the layer
    objectives and their combinations; KD and its divergences on the MLM head, given a teacher that has one:
    ``mlm_head`` False refuses them, None does not know the teacher)."""
    for part in getattr(cls, "part_classes", ()):  # a combination distils without labels when every part does
        if (why := without_labels(part, mlm_head)) is not None:
            return f"has a part, {part.name}, that {why}"
    if not cls.uses_teacher:
        return "reads no teacher"
    if cls.multi_teacher:
        return "learns from a team of fine-tuned teachers"
    if cls.label_free is Objective.label_free:
        return "has no loss without labels"
    if cls.stages not in (Objective.stages, LayerObjective.stages):
        return "has stages of its own that need labels"
    if not issubclass(cls, LayerObjective) and mlm_head is False:
        return PREDICTION_LAYER
    return None


def label_free(cls: type[Objective]) -> bool:
    """Whether ``cls`` distils without labels with some teacher (:func:`without_labels`)."""
    return without_labels(cls) is None


_PART = re.compile(r"^\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([a-z0-9_-]+)\s*$")


def combine(spec: str, get) -> type[Objective]:
    """Build the class of a combination ``a+b`` or ``a+0.5*b`` from registered layer objectives."""
    parts = []
    for piece in spec.split("+"):
        m = _PART.match(piece)
        if not m:
            raise UsageError(f"cannot read objective combination {spec!r}: write parts as name or weight*name, joined by +")
        cls = get(m.group(2))
        if not issubclass(cls, LayerObjective):
            raise UsageError(f"{m.group(2)!r} cannot be combined with +: only intermediate-layer objectives combine "
                             "(each already carries the prediction-layer KD term)")
        parts.append((float(m.group(1) or 1.0), cls))
    if len({c.name for _, c in parts}) != len(parts):
        raise UsageError(f"objective combination {spec!r} names a part twice")
    canonical = "+".join(c.name if w == 1.0 else f"{w:g}*{c.name}" for w, c in parts)

    class Combined(LayerObjective):
        __doc__ = f"Weighted sum of the intermediate terms of {canonical}, plus the prediction-layer term."
        name = canonical
        version = "+".join(c.version for _, c in parts)
        paper = "combination: " + "; ".join(c.paper for _, c in parts)
        needs = Needs(logits=True, hidden_states=any(c.needs.hidden_states for _, c in parts),
                      attentions=any(c.needs.attentions for _, c in parts),
                      token_aligned=any(c.needs.token_aligned for _, c in parts))
        options = tuple(o for _, c in parts for o in c.declared_options())  # a later part's range wins, as before
        reads = tuple(r for _, c in parts for r in c.declared_reads())
        reads_sentence = any(c.reads_sentence for _, c in parts)
        part_classes = tuple(c for _, c in parts)

        def __init__(self, ctx: Context):
            super().__init__(ctx)
            self.weights = [w for w, _ in parts]
            self.parts = nn.ModuleList([c(ctx) for _, c in parts])

        def intermediate_terms(self, student, teacher, batch):
            return {p.name: p.intermediate(student, teacher, batch) for p in self.parts}

        def weighted_intermediate(self, terms):
            return sum(w * terms[p.name] for w, p in zip(self.weights, self.parts))

    return Combined

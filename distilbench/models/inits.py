"""Student layer-initialisation strategies (a registry).

``--init layers:1,2,3`` copies those teacher layers (1-based, as the papers count); ``every-k``, ``first-k`` and
``last-k`` pick ``--student-layers`` of them; ``random`` takes only the teacher's config; ``pretrained:MODEL`` loads a
smaller pretrained model. For the copying strategies the embeddings and the task head come from the (fine-tuned)
teacher as well, as paper 002 does. Every copied tensor's shape is checked and the mapping is logged and stored
(the shape of nanoGPT's ``from_pretrained``).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from ..errors import UsageError
from ..plugins import Registry
from .pooling import restore_pooling


@dataclass(frozen=True)
class InitPlan:
    spec: str  # canonical form, stored with every result ("layers:1,2,3", "random:3", "pretrained:minilm-l6")
    layers: tuple[int, ...] | None  # teacher layers copied, 1-based; None for random / pretrained
    pretrained: str | None = None
    num_layers: int | None = None
    hidden: int | None = None  # a random student's width (None: the teacher's)


INITS: Registry[Callable[[str | None, int, int], InitPlan]] = Registry("init strategy")


def _layers(layers: list[int], teacher_layers: int) -> InitPlan:
    bad = [i for i in layers if not 1 <= i <= teacher_layers]
    if bad:
        raise UsageError(f"teacher layer {bad[0]} is out of range: the teacher has layers 1..{teacher_layers}")
    if len(set(layers)) != len(layers) or not layers:
        raise UsageError(f"--init layers:... needs distinct layer numbers (got {layers})")
    return InitPlan(f"layers:{','.join(map(str, layers))}", tuple(layers), num_layers=len(layers))


def _need_fewer(n: int, teacher_layers: int) -> None:
    if n > teacher_layers:
        raise UsageError(f"--student-layers {n} is more than the teacher's {teacher_layers} layers")


@INITS.register("layers")
def _explicit(arg, teacher_layers, student_layers):
    """layers:1,2,3 copies exactly those teacher layers (1-based); embeddings and task head from the teacher."""
    if not arg or not re.fullmatch(r"\d+(,\d+)*", arg):
        raise UsageError(f"--init layers needs 1-based teacher layer numbers, e.g. layers:1,2,3 (got {arg!r})")
    return _layers([int(x) for x in arg.split(",")], teacher_layers)


@INITS.register("every-k")
def _every_k(arg, teacher_layers, student_layers):
    """every k-th teacher layer, k = teacher layers / --student-layers (12 -> 3 layers: 4,8,12; paper 002 Table 1)."""
    _need_fewer(student_layers, teacher_layers)
    k = teacher_layers / student_layers  # 12 teacher, 3 student layers -> 4, 8, 12 (paper 002 Table 1)
    return _layers([round(k * (i + 1)) for i in range(student_layers)], teacher_layers)


@INITS.register("first-k")
def _first_k(arg, teacher_layers, student_layers):
    """the first --student-layers teacher layers (1,2,3: lower layers, paper 002's best init for KD)."""
    _need_fewer(student_layers, teacher_layers)
    return _layers(list(range(1, student_layers + 1)), teacher_layers)


@INITS.register("last-k")
def _last_k(arg, teacher_layers, student_layers):
    """the last --student-layers teacher layers (10,11,12 of 12)."""
    _need_fewer(student_layers, teacher_layers)
    return _layers(list(range(teacher_layers - student_layers + 1, teacher_layers + 1)), teacher_layers)


@INITS.register("random")
def _random(arg, teacher_layers, student_layers):
    """random weights; only the teacher's config (with --student-layers layers) is used."""
    return InitPlan(f"random:{student_layers}", None, num_layers=student_layers)


@INITS.register("pretrained")
def _pretrained(arg, teacher_layers, student_layers):
    """pretrained:MODEL loads a smaller pretrained model (alias, hub id or path) with a new task head."""
    if not arg:
        raise UsageError("--init pretrained needs a model: pretrained:minilm-l6, a hub id or a local path")
    return InitPlan(f"pretrained:{arg}", None, pretrained=arg)


def parse_init(spec: str, teacher_layers: int, student_layers: int, hidden: int | None = None,
               teacher_heads: int | None = None) -> InitPlan:
    """The init plan of ``spec``; ``hidden`` (``--student-hidden``) narrows or widens a random student, whose spec
    then names it (``random:3x192``) and which keeps the teacher's ``teacher_heads`` attention heads."""
    name, _, arg = spec.partition(":")
    plan = INITS.get(name)(arg or None, teacher_layers, student_layers)
    if hidden is None:
        return plan
    if plan.layers is not None or plan.pretrained is not None:
        raise UsageError(f"--student-hidden sets the width of a random student; --init {spec} takes the width of the "
                         f"layers or model it loads: use --init random, or drop --student-hidden")
    if teacher_heads and hidden % teacher_heads:
        raise UsageError(f"--student-hidden {hidden} must be a multiple of the teacher's {teacher_heads} attention heads "
                         f"(the student keeps them: attention transfer compares head by head)")
    return replace(plan, spec=f"{plan.spec}x{hidden}", hidden=hidden)


def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer layers, found by shape rather than by name, so BERT, RoBERTa, MPNet and others
    work alike: the ModuleList whose length is the config's number of hidden layers."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name:
            return name, module
    raise UsageError(f"cannot find the transformer layers of {type(model).__name__}: no ModuleList of {n} layers")


def copy_layers(teacher: nn.Module, layers: tuple[int, ...], seed: int) -> tuple[nn.Module, list[str]]:
    """A student of ``len(layers)`` layers: layer k is a copy of teacher layer ``layers[k]``; everything else
    (embeddings, position bias, pooler, task head) is copied by name. Returns the student and the logged mapping."""
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    torch.manual_seed(seed)  # nothing random should survive the copy, but seed it anyway: the init is part of seed k
    student = type(teacher)(config)
    prefix, _ = layer_list(teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    mapping = [f"student layer {k + 1} <- teacher layer {t}" for k, t in enumerate(layers)]
    new_state = {}
    for key, tensor in s_state.items():
        m = pattern.match(key)
        source = f"{prefix}.{layers[int(m.group(1))] - 1}.{m.group(2)}" if m else key
        if source not in t_state:
            raise RuntimeError(f"layer copy: teacher has no tensor {source} for student tensor {key}")
        if t_state[source].shape != tensor.shape:
            raise RuntimeError(f"layer copy: shape {tuple(t_state[source].shape)} of teacher {source} != {tuple(tensor.shape)} of student {key}")
        new_state[key] = t_state[source].clone()
    student.load_state_dict(new_state, strict=True)
    return restore_pooling(student), mapping  # the config copied the teacher's pooling: its head reads the same


def build_student(plan: InitPlan, teacher: nn.Module, seed: int, load_pretrained: Callable[[str], nn.Module]) -> tuple[nn.Module, list[str]]:
    if plan.layers is not None:
        return copy_layers(teacher, plan.layers, seed)
    if plan.pretrained is not None:
        torch.manual_seed(seed)  # the new task head is random: seed k fixes it
        model = load_pretrained(plan.pretrained)
        return model, [f"pretrained {plan.pretrained}: all {model.config.num_hidden_layers} layers and embeddings; new task head"]
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = plan.num_layers
    width = ""
    if plan.hidden is not None and plan.hidden != config.hidden_size:
        if getattr(config, "intermediate_size", None):  # the feed-forward keeps the teacher's ratio to the width
            config.intermediate_size = round(config.intermediate_size * plan.hidden / config.hidden_size)
        config.hidden_size = plan.hidden
        width = f", hidden size {plan.hidden}"
    torch.manual_seed(seed)
    return restore_pooling(type(teacher)(config)), [f"random init from the teacher's config, {plan.num_layers} layers{width}"]

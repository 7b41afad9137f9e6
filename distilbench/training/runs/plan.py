"""Planning a run: every input resolved and validated before anything is trained or written, and the identity of
each (objective, seed) run that follows from the plan.

A run's identity (:func:`run_identity`) is what its row's key hashes: a changed value that changes results makes a
new key, and everything else (where it runs, how many workers) stays out of it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...config import RunConfig, nondefault_settings
from ...data.batching import fingerprint, selection_split, subsample, transfer_set, unlabelled
from ...data.tasks import Example, Task, get_task, load_split, resolve_data_dir
from ...errors import UsageError
from ...models.inits import InitPlan, parse_init
from ...models.loading import declared_pooling, load_tokenizer, model_config, model_fingerprint, resolve_model
from ...objectives import Objective, get_objective
from ...results.store import ResultsStore
from ..loop.lm import refuse_lm_family
from .pairs import distillation_pairs
from ..loop.precision import identity_part
from ..teachers.teacher import TeacherRecord


@dataclass
class Plan:
    """Everything a run needs, resolved and validated before anything is trained or written."""

    cfg: RunConfig
    task: Task
    objectives: list[type[Objective]]
    init: InitPlan
    teacher_layers: int
    train_all: list[Example]
    dev: list[Example]
    train_rows: int
    store: ResultsStore
    seeds: list[int]
    pairs: list[tuple[int, int]]
    team: list[str]  # multi-teacher objectives: canonical member names (NAME or NAME@layers:...)
    pooling: str | None = None  # the student's sentence representation (sentence tasks only; distilbench.models.pooling)
    teacher_train: list[Example] | None = None  # what the teacher fine-tunes on: train_all, or a larger sample holding it
    transfer: list[Example] = field(default_factory=list)  # unlabelled examples only the teacher labels (--transfer-examples)

    @property
    def teacher_examples(self) -> list[Example]:
        return self.teacher_train if self.teacher_train is not None else self.train_all

    @property
    def teacher_read(self) -> list[Example]:
        """The training examples whose teacher outputs the runs read: the labelled ones, then the transfer set."""
        return self.train_all + self.transfer

    def training_part(self, objective: type[Objective], seed: int) -> tuple[list[Example], list[Example]]:
        """Seed ``seed``'s (training, selection) examples for ``objective``: the labelled ones split, the transfer set
        added to the training part of an objective that reads a teacher."""
        train, select = selection_split(self.train_all, self.cfg.selection_fraction, seed)
        return (train + self.transfer if objective.uses_teacher else train), select


class FamilyChecks(Protocol):
    """What planning asks of a task family (its runner class, :mod:`.families`): the teacher's config, and the
    family's own refusals, each one line (exit 2) before anything is trained."""

    @classmethod
    def teacher_config(cls, cfg: RunConfig) -> Any: ...

    @classmethod
    def check_run(cls, cfg: RunConfig, task, teacher_config, train: list, dev: list | None,
                  objectives: list[type[Objective]]) -> None: ...


def plan_run(cfg: RunConfig, family: type[FamilyChecks], read_dev: bool = True) -> Plan:
    """Resolve and validate a run of ``cfg.task``'s family. ``read_dev=False`` (a search) never opens the dev file:
    ``Plan.dev`` is None."""
    task = get_task(cfg.task)
    main = get_objective(cfg.objective)
    objectives = [main] + ([get_objective("none")] if cfg.baseline and main.name != "none" else [])
    data_dir = resolve_data_dir(cfg.data_dir)
    train_file = load_split(task, "train", data_dir)
    dev = load_split(task, "dev", data_dir)[: cfg.max_eval_examples] if read_dev else None

    refuse_lm_family(task, cfg)
    for objective in objectives:
        objective.check_options(cfg, task)
    teacher_config = family.teacher_config(cfg)
    family.check_run(cfg, task, teacher_config, train_file, dev, objectives)
    init = parse_init(cfg.init, teacher_config.num_hidden_layers, cfg.student_layers, cfg.student_hidden,
                      getattr(teacher_config, "num_attention_heads", None))
    if init.pretrained is not None:
        resolve_model(init.pretrained)  # a missing or mistyped student fails now, not after the teacher is trained
        if any(o.needs.token_aligned for o in objectives) and not same_vocabulary(cfg.teacher, init.pretrained):
            raise UsageError(f"objective {main.name} compares token positions, but teacher {cfg.teacher} and student "
                             f"{init.pretrained} have different vocabularies; use a student initialised from the teacher's "
                             f"layers, or an objective that needs no token alignment (kd, hid-cls)")
    pooling = student_pooling(cfg, task, init.pretrained)
    student_layers = (model_config(init.pretrained).num_hidden_layers
                      if init.pretrained else init.num_layers)
    pairs = distillation_pairs(cfg.layer_map, init, student_layers, teacher_config.num_hidden_layers)
    team = plan_team(cfg, main, task)
    train_all = subsample(train_file, cfg.max_train_examples)
    if not selection_split(train_all, cfg.selection_fraction, 0)[0]:  # its size does not depend on the seed
        raise UsageError(f"{len(train_all)} training example(s) leave none to train on once --selection-fraction "
                         f"{cfg.selection_fraction} holds out the selection split; give at least 2 (--max-train-examples) "
                         f"or a smaller --selection-fraction")
    teacher_train, transfer = larger_samples(cfg, task, train_file)
    store = ResultsStore(cfg.results)  # an unwritable path fails here, before any training
    return Plan(cfg, task, objectives, init, teacher_config.num_hidden_layers, train_all,
                dev, len(train_file), store, cfg.seed_values(), pairs, team, pooling, teacher_train, transfer)


def larger_samples(cfg: RunConfig, task: Task, train_file: list[Example]) -> tuple[list[Example] | None, list[Example]]:
    """The teacher's larger sample (``--teacher-max-train-examples``) and the transfer set (``--transfer-examples``),
    both drawn from the one fixed sample whose first examples are the students' (sentence tasks only)."""
    for flag, value in (("--teacher-max-train-examples", cfg.teacher_max_train_examples),
                        ("--transfer-examples", cfg.transfer_examples)):
        if value is not None and not task.sentence_level:
            raise UsageError(f"{flag} applies to sentence classification and regression; {task.name} is {task.family}: "
                             f"leave it out")
    teacher_train = subsample(train_file, cfg.teacher_max_train_examples) if cfg.teacher_max_train_examples else None
    if not cfg.transfer_examples:
        return teacher_train, []
    free = len(train_file) - cfg.max_train_examples
    if cfg.transfer_examples > free:
        raise UsageError(f"--transfer-examples {cfg.transfer_examples}: {task.name}'s training file holds {max(free, 0)} "
                         f"examples beyond the {cfg.max_train_examples} labelled ones; give at most {max(free, 0)}")
    return teacher_train, unlabelled(transfer_set(train_file, cfg.max_train_examples, cfg.transfer_examples), task.regression)


def student_pooling(cfg: RunConfig, task: Task, pretrained: str | None) -> str | None:
    """The student's sentence representation: ``--pooling``, else its own model's (a pretrained student) or the
    teacher's (a student built from the teacher's layers or config); None for per-token tasks (QA, causal LM), where
    ``--pooling`` is refused."""
    if not task.sentence_level:
        if cfg.pooling is not None:
            raise UsageError(f"--pooling applies to sentence classification and regression; {task.name} is {task.family} "
                             "(its heads read every token): leave --pooling out")
        return None
    return cfg.pooling or declared_pooling(pretrained or cfg.teacher)


def plan_team(cfg: RunConfig, objective: type[Objective], task: Task) -> list[str]:
    """The teacher team of a multi-teacher objective, each member resolved now; ``NAME@INIT`` (a truncated teacher:
    INIT's layers of NAME's pretrained weights, then fine-tuned) is written canonically (``mpnet-base@layers:1,2,3``)
    so that its cache key does not depend on other flags."""

    if not objective.multi_teacher:
        if cfg.teachers:
            raise UsageError(f"--teachers is for multi-teacher objectives (autoskd, skd, avgkd); {objective.name} learns from --teacher")
        return []
    if task.regression:
        raise UsageError(f"{objective.name} distils class distributions; {task.name} is a regression task: use a classification task")
    team = split_team(cfg.teachers or "")
    if len(team) < 2:
        raise UsageError(f"{objective.name} needs a team of at least two teachers, e.g. --teachers mpnet-base,minilm-l6,mpnet-base@first-k "
                         f"(got {cfg.teachers!r})")
    members = []
    for member in team:
        base, _, init = member.partition("@")
        layers = model_config(base).num_hidden_layers
        if init:
            spec = parse_init(init, layers, cfg.student_layers)
            if spec.layers is None:
                raise UsageError(f"--teachers {member}: NAME@INIT takes a layer-copying init (layers:1,2,3, first-k, every-k, last-k), not {init}")
            member = f"{base}@{spec.spec}"
        members.append(member)
    if len(set(members)) != len(members):
        raise UsageError(f"--teachers names the same teacher twice: {', '.join(members)}")
    return members


def split_team(text: str) -> list[str]:
    """``--teachers`` as members: a comma starts the next member, except that a number after a member that ends in a
    layer list continues the list (``NAME@layers:1,2,3,OTHER`` is two members)."""
    members: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if members and part.isdigit() and re.search(r"@layers:[\d,]+$", members[-1]):
            members[-1] += "," + part
        elif part:
            members.append(part)
    return members


def same_vocabulary(a: str, b: str) -> bool:
    return load_tokenizer(a).get_vocab() == load_tokenizer(b).get_vocab()


def student_name(cfg: RunConfig, init: InitPlan) -> str:
    return init.pretrained if init.pretrained else f"{cfg.teacher}[{init.spec}]"


def run_identity(plan: Plan, objective: type[Objective], teacher: TeacherRecord, seed: int,
                 team: list[TeacherRecord] | None = None, precision: str = "fp32", processes: int = 1) -> dict[str, Any]:
    cfg = plan.cfg
    return {"task": plan.task.name, "task_version": plan.task.version, "objective": objective.name,
            "objective_version": objective.version, "objective_params": objective.param_values(cfg),
            "init": plan.init.spec, "student": student_name(cfg, plan.init),
            "student_weights": model_fingerprint(plan.init.pretrained) if plan.init.pretrained else None,
            "teacher": cfg.teacher, "teacher_key": teacher.key,
            "hparams": {k: getattr(cfg, k) for k in ("epochs", "lr", "batch_size", "max_length", "warmup_ratio", "weight_decay",
                                                      "max_grad_norm", "selection_fraction", "select_best_epoch", "max_train_examples")},
            **({"teacher_cache": "fp16"} if cfg.teacher_cache == "fp16" else {}),  # fp16 teacher outputs change results
            # a transfer set changes what a teacher-reading objective trains on; `none` never reads it: its rows stay shared
            **({"transfer_examples": cfg.transfer_examples} if cfg.transfer_examples and objective.uses_teacher else {}),
            "dev": fingerprint(plan.dev), "seed": seed,
            # a mean-pooled student (and teacher) computes other things; absent for cls, the pooling of every row
            # stored before it was recorded, so their keys hold
            **({"pooling": plan.pooling} if plan.pooling not in (None, "cls") else {}),
            **({"team": [r.key for r in team]} if team else {}),
            # bf16 changes results, so it makes another cell (never paired with fp32); absent for fp32, the precision
            # of every row stored before it was recorded, so their keys hold
            **identity_part(precision),
            # N data-parallel processes (torchrun / accelerate launch) each take --batch-size examples a step: a step
            # averages N batches and an epoch has 1/N the steps, so the run computes something else; absent for one
            **({"processes": processes} if processes > 1 else {})}


def run_settings(cfg: RunConfig, precision: str) -> dict[str, Any]:
    """What a row's table titles and report headers must say about its numbers: the non-default settings, and the
    precision when it is not fp32."""
    return {**nondefault_settings(cfg), **identity_part(precision)}

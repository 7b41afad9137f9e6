"""A suite's general students: the ``pretrain:`` block of a suite file (paper 002 Tables 2 and 4), task-agnostic
distillation (`distilbench pretrain`) run once per student before the cells, each then an init of the grid::

    pretrain:
      corpus: general-local            # a registered corpus or local text (`distilbench pretrain --corpus`)
      tokens: 2000000                  # or steps; default one pass
      settings: {teacher: minilm-l6, student_layers: 3, max_length: 128, lr: 1.0e-4, batch_size: 32}
      students:                        # NAME: the objective, the init and any other pretrain option of that student
        att-mse-random: {objective: att-mse, init: random}
        hid-cls-first: {objective: hid-cls, init: first-k}
    inits: ["general:att-mse-random", "general:hid-cls-first"]   # fine-tunes each (pretrained:OUT/NAME)

Students go to ``OUT/NAME`` (``out:``, default ``students/SUITE[-SCALE]``), so a cell's init is
``pretrained:OUT/NAME`` in its rows, whose identity holds the student's weights' fingerprint. A finished student is
never distilled again, and a killed one resumes from its checkpoint (:mod:`distilbench.training.families.general`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import RunConfig, checked_options, option_names
from ..errors import UsageError
from ..training.families.general import pretrain
from ..training.families.general_plan import (PRETRAIN_DEFAULTS, Budget, GeneralPlan, check_counts, finished_key,
                                               plan_general, pretrain_options)

PREFIX = "general:"
KEYS = ("out", "corpus", "steps", "tokens", "seed", "checkpoint_every", "settings", "students")


@dataclass
class GeneralStudents:
    """The ``pretrain:`` block, read and checked (its plans are made by :func:`plans`)."""

    out: Path
    corpus: str
    budget: Budget
    seed: int
    checkpoint_every: int
    settings: dict[str, Any]  # RunConfig options of every student
    students: dict[str, dict[str, Any]] = field(default_factory=dict)  # NAME -> its own options (objective, init, ...)

    def folder(self, name: str) -> Path:
        return self.out / name

    def init_spec(self, init: str, where: str) -> str:
        """A grid init: ``general:NAME`` becomes ``pretrained:OUT/NAME``; any other stays as written."""
        if not init.startswith(PREFIX):
            return init
        name = init[len(PREFIX):]
        if name not in self.students:
            raise UsageError(f"{where}: init {init} names no student of the pretrain block ({', '.join(self.students)})")
        return f"pretrained:{self.folder(name).as_posix()}"

    def config(self, name: str, overrides: dict[str, Any] | None = None) -> RunConfig:
        """Student ``name``'s options: `distilbench pretrain`'s defaults < the block's settings < the command line's
        ``--cpu``/``--mixed-precision`` < the student's own."""
        machine = {k: v for k, v in (overrides or {}).items() if k in ("cpu", "mixed_precision")}
        cfg = RunConfig(**{**PRETRAIN_DEFAULTS, **self.settings, **machine, **self.students[name]}).validate()
        if cfg.mixed_precision == "auto":  # the key holds the precision: auto would name another student per machine
            raise UsageError(f"student {name}: give mixed_precision (bf16, fp32 or no) in the pretrain block's settings: "
                             "auto resolves per machine, and a student's key holds its precision")
        return cfg

    def teacher(self, name: str) -> str:
        return self.config(name).teacher


def parse(value: Any, where: str, default_out: Path) -> GeneralStudents | None:
    """The ``pretrain:`` mapping (None when absent); a bad key or value is one line naming it."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping (got {type(value).__name__})")
    unknown = sorted(str(k) for k in value if k not in KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(KEYS)}")
    try:
        check_counts(value, str)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    seed = value.get("seed", 0)
    students = value.get("students")
    if not isinstance(students, dict) or not students:
        raise UsageError(f"{where}: students must be a mapping of NAME: {{objective: ..., init: ...}} (got {students!r})")
    bad = [str(n) for n in students if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(n))]
    if bad:
        raise UsageError(f"{where}: student name {bad[0]!r} is not a folder name (letters, digits, . _ -)")
    return GeneralStudents(out=Path(str(value.get("out") or default_out)).expanduser(), corpus=str(value.get("corpus", "general-local")),
                           budget=Budget(value.get("steps"), value.get("tokens")), seed=seed,
                           checkpoint_every=value.get("checkpoint_every", 200),
                           settings=_options(value.get("settings") or {}, f"{where}.settings"),
                           students={str(n): _options(o, f"{where}.students.{n}", need=("objective", "init"))
                                     for n, o in students.items()})


def _options(values: Any, where: str, need: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise UsageError(f"{where} must be a mapping (got {type(values).__name__})")
    known = set(pretrain_options(option_names()))
    out = checked_options(values, where, known, f"a pretrain block takes `distilbench pretrain`'s options: {', '.join(sorted(known))}")
    missing = [n for n in need if n not in out]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)}")
    return out


def claims_inits(claims: Any, general: GeneralStudents | None, where: str) -> Any:
    """The claims with each side's ``init: general:NAME`` written as the cells' ``pretrained:OUT/NAME``."""
    if general is None or not isinstance(claims, list):
        return claims

    def side(value):
        if isinstance(value, dict) and isinstance(value.get("init"), str):
            return {**value, "init": general.init_spec(value["init"], where)}
        return value

    return [{k: side(v) for k, v in c.items()} if isinstance(c, dict) else c for c in claims]


def used(general: GeneralStudents, inits: list[str]) -> list[str]:
    """The students the grid's inits name, in order."""
    return [i[len(PREFIX):] for i in inits if i.startswith(PREFIX) and i[len(PREFIX):] in general.students]


def plans(general: GeneralStudents, names: list[str], where: str,
          overrides: dict[str, Any] | None = None) -> list[tuple[str, GeneralPlan]]:
    """Each named student's plan: every input checked before anything trains (one line naming the student)."""
    out = []
    for name in names:
        try:
            out.append((name, plan_general(general.config(name, overrides), general.corpus, general.budget, general.seed,
                                           str(general.folder(name)), general.checkpoint_every)))
        except UsageError as exc:
            raise UsageError(f"{where}: student {name}: {exc}") from None
    return out


def missing(planned: list[tuple[str, GeneralPlan]]) -> list[str]:
    """The students not distilled yet (no finished folder of their key)."""
    return [name for name, plan in planned if finished_key(plan.out) != plan.key]


def build(planned: list[tuple[str, GeneralPlan]], log: Callable[[str], None], command: str) -> None:
    """Distil every student not finished yet (a killed one resumes from its checkpoint)."""
    for k, (name, plan) in enumerate(planned, start=1):
        log(f"general student {k}/{len(planned)}: {name} ({plan.objective.name}, {plan.init.spec}) -> {plan.out}")
        pretrain(plan, log, f"{command} [general student {name}]")


__all__ = ["PREFIX", "GeneralStudents", "build", "claims_inits", "missing", "parse", "plans", "used"]

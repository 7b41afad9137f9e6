"""Options: what one flag of `distilbench run` is (:class:`Option`), the `--help` sections, and the table of the
options objectives declare (:func:`declare_options`), which :mod:`distilbench.config` reads beside RunConfig's own
fields. Bottom layer: imports only ``errors``."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from .errors import UsageError


# The `--help` sections, in this order (objectives' own sections before DATA); every option names its own (``group=``).
MODELS, TRAINING, OBJECTIVES, DATA = "models", "training", "objectives", "data and output"
GROUPS = {
    MODELS: "the teacher, the student and how the teacher is fine-tuned and cached",
    TRAINING: "the student's training, seeds and devices",
    OBJECTIVES: "what the student learns from the teacher",
    DATA: "the task, how much of it, and where results go",
}


@dataclass(frozen=True)
class Option:
    """One option: its flag ``--NAME``, value type (``kind``: int, float, str, bool, or ``X | None``), default, help,
    `--help` section, the accepted values of a fixed set (``choices``), the bounds of a number (``low``/``high``,
    ``low_open``: strictly above ``low``) and the range `distilbench search` draws it from (``search``:
    ``("float", low, high[, "log"])`` | ``("int", low, high)`` | ``("categorical", values)``)."""

    name: str
    kind: Any
    default: Any
    help: str
    group: str = OBJECTIVES
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    search: tuple | None = None

    @property
    def base(self) -> type:
        """The value's type without ``None``."""
        return next((a for a in typing.get_args(self.kind) if a is not type(None)), self.kind)

    def same_value(self, other: "Option") -> bool:
        """Two declarations of one option agree on what a value is (help and search range may differ by objective)."""
        return (self.kind, self.default, self.choices, self.low, self.high, self.low_open, self.group) == \
            (other.kind, other.default, other.choices, other.low, other.high, other.low_open, other.group)

    def check(self, value: Any) -> None:
        """Refuse a value outside ``choices`` or the bounds, in one line naming the flag and what is accepted."""
        flag = "--" + self.name.replace("_", "-")
        if value is None:
            return
        if self.choices and value not in self.choices:
            raise UsageError(f"{flag} must be one of {', '.join(self.choices)} (got {value!r})")
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and value > self.high
        if below or above:
            if self.high is None:
                accepted = f"{'>' if self.low_open else '>='} {self.low:g}"
            else:
                accepted = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
            raise UsageError(f"{flag} must be {accepted} (got {value})")


# the objectives' options, by name (filled by declare_options when an objective registers)
DECLARED: dict[str, Option] = {}
RESERVED: set[str] = set()  # RunConfig's own field names (config fills it): never an objective's option


def declare_options(options: typing.Iterable[Option], groups: dict[str, str] | None = None) -> None:
    """Register an objective's options (and the `--help` sections they name, with their descriptions). An option two
    objectives share (``temperature``) must be declared alike by both; a clash with a run field or a different
    declaration is a ValueError naming it (a defect in the objective's file, found when it registers)."""
    for name, about in (groups or {}).items():
        if GROUPS.get(name, about) != about:
            raise ValueError(f"option group {name!r} is already declared with another description")
        GROUPS[name] = about
    if DATA in GROUPS:  # keep the data section last in `--help`
        GROUPS[DATA] = GROUPS.pop(DATA)
    for option in options:
        if option.group not in GROUPS:
            raise ValueError(f"option {option.name!r}: unknown group {option.group!r}; accepted: {', '.join(GROUPS)}")
        if option.name in RESERVED:
            raise ValueError(f"option {option.name!r} is already a RunConfig field")
        known = DECLARED.setdefault(option.name, option)
        if not known.same_value(option):
            raise ValueError(f"option {option.name!r} is declared twice with different types, defaults or bounds")

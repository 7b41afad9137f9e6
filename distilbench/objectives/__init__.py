"""Objective registry. A built-in objective is one module in this package defining an ``Objective`` subclass with a
``name``; third-party objectives register through the ``distilbench.objectives`` entry-point group
(``name = "package.module:Class"``)."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from importlib.metadata import entry_points

from ..registry import Registry
from .base import Context, LossOutput, Needs, Objective, Outputs, Stage, StepContext

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name in ("base", "layerwise"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Objective) and cls.__module__ == module.__name__ and getattr(cls, "name", None):
                OBJECTIVES.register(cls.name, cls)
    for ep in entry_points(group="distilbench.objectives"):
        OBJECTIVES.register(ep.name, ep.value)


def get_objective(name: str) -> type[Objective]:
    """A registered objective, or a ``+`` combination of layer objectives (``att-kl+hid-seq``, ``att-kl+0.5*val-kl``)."""
    if "+" in name:
        from .layerwise import combine
        return combine(name, OBJECTIVES.get)
    return OBJECTIVES.get(name)


_discover()

__all__ = ["OBJECTIVES", "Context", "LossOutput", "Needs", "Objective", "Outputs", "Stage", "StepContext", "get_objective"]

"""Objective registry.

A built-in objective is an ``Objective`` subclass registered where it is defined, with
``@register_objective("name")``, its options declared on the class (``options``); every module and package of this
folder is imported here, so adding an objective is adding one file. Third-party objectives register through the
``distilbench.objectives`` entry-point group (``name = "package.module:Class"``), resolved on first use or by
:func:`load_all` (the flags of their options).

Layout: one module per objective, except two families that share their machinery: ``ted`` (ted, ted-kl: the same
filters and stages) and the package ``autoskd/`` (autoskd and its baselines skd, avgkd: the same team and L_d;
``core.py`` the maths of paper 003, ``objective.py`` the three objectives). Beside them:
``base`` (the contract and the registry), ``layerwise`` (the frame of the intermediate-layer objectives: the loop over
layer pairs, the prediction term, the schedules, ``+`` combinations), ``functional`` (the masked losses they share,
with keyword-only ``student=`` / ``teacher=``) and ``distributions`` (divergences between class or next-token
distributions over the real rows, the top-k teacher; kd-reverse and gkd-jsd fill in ``kd``'s
``DivergenceKD`` frame with them).

May import: ``models`` (the layers of a model), ``data`` and the bottom layer (``config``, ``errors``, ``plugins``,
``hashing``); never ``training``, ``results``, ``report`` or above.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from .base import OBJECTIVES, Context, LossOutput, Needs, Objective, Outputs, Stage, StepContext, register_objective
from .layerwise import combine

# the built-in objectives: importing a module registers what it defines (in name order, so registration is stable)
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

for _ep in entry_points(group="distilbench.objectives"):
    OBJECTIVES.register(_ep.name, _ep.value)


def load_all() -> None:
    """Resolve every registered objective (third-party ones are lazy), so that all their options are declared."""
    for name in OBJECTIVES.names():
        OBJECTIVES.get(name)


def get_objective(name: str) -> type[Objective]:
    """A registered objective, or a ``+`` combination of layer objectives (``att-kl+hid-seq``, ``att-kl+0.5*val-kl``)."""
    if "+" in name:
        return combine(name, get_objective)
    return OBJECTIVES.get(name)


__all__ = ["OBJECTIVES", "Context", "LossOutput", "Needs", "Objective", "Outputs", "Stage", "StepContext", "get_objective",
           "load_all", "register_objective"]

"""Objective registry.

A built-in objective is an ``Objective`` subclass registered where it is defined, with
``@register_objective("name")``; the modules below are imported here by name, so every built-in objective is visible
in code (adding one means adding its module to that import). Third-party objectives register through the
``distilbench.objectives`` entry-point group (``name = "package.module:Class"``), resolved on first use.

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

from importlib.metadata import entry_points

from .base import OBJECTIVES, Context, LossOutput, Needs, Objective, Outputs, Stage, StepContext, register_objective

# the built-in objectives: importing a module registers what it defines
from . import att_kl, att_mse, autoskd, gkd_jsd, hid_cls, hid_cls_contrast, hid_seq, kd, kd_reverse, lwd, none, ted, val_kl  # noqa: F401

for _ep in entry_points(group="distilbench.objectives"):
    OBJECTIVES.register(_ep.name, _ep.value)


def get_objective(name: str) -> type[Objective]:
    """A registered objective, or a ``+`` combination of layer objectives (``att-kl+hid-seq``, ``att-kl+0.5*val-kl``)."""
    if "+" in name:
        from .layerwise import combine
        return combine(name, OBJECTIVES.get)
    return OBJECTIVES.get(name)


__all__ = ["OBJECTIVES", "Context", "LossOutput", "Needs", "Objective", "Outputs", "Stage", "StepContext", "get_objective",
           "register_objective"]

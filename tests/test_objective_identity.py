"""Every objective's identity, pinned in ``tests/data/golden.json`` (``identities``): version, params, their resolved
values, needs, search space, flags, identity() and each stage's stage_identity() under two configs, for every
registered objective and three combinations. Stored run keys and shared-stage caches are built from these, so a
refactor must leave every one as it is (key order too). A deliberate change bumps the objective's version and
regenerates the file (``--update-golden``, see ``tests/golden.py``).
"""
from __future__ import annotations

import json

import pytest
import torch

import golden

from distilbench.config import RunConfig
from distilbench.objectives import OBJECTIVES, Context, get_objective
from distilbench.data.tasks import get_task

PAIRS = [(1, 2), (2, 4), (3, 6)]
COMBOS = ["att-kl+hid-seq", "att-kl+0.5*val-kl", "hid-seq+lwd+0.25*att-mse"]
CONFIGS = {"default": {}, "sequential": dict(task="rte", schedule="sequential", beta=2.5)}


def facts(name: str) -> dict:
    """What the pinned table holds for ``name``; a stage whose stage_identity() is identity() is written "identity"."""
    cls = get_objective(name)
    multi = cls.multi_teacher
    row = {"version": cls.version, "params": cls.params,  # not its `paper` line: prose, pinned nowhere
           "param_values": cls.param_values(RunConfig()), "needs": cls.needs, "space": cls.space(),
           "flags": (cls.uses_teacher, cls.separable, cls.teacher_cache, multi)}
    for label, kw in CONFIGS.items():
        torch.manual_seed(0)
        ctx = Context(get_task("rte"), RunConfig(**kw), PAIRS, 8, 12, num_teachers=3 if multi else 1, student_heads=2,
                      teacher_heads=2, seed=0, team=[{"name": f"t{i}", "params": 100 * (i + 1)} for i in range(3)] if multi else [])
        obj = cls(ctx)
        ident = obj.identity()
        row[f"identity_{label}"] = ident
        row[f"stages_{label}"] = [(s.name, obj.stage_identity(s) if obj.stage_identity(s) != ident else "identity")
                                  for s in obj.stages()]
    return row


NAMES = sorted(OBJECTIVES.names()) + COMBOS


@pytest.mark.parametrize("name", NAMES)
def test_objective_identity_is_unchanged(request, name):
    got = golden.plain(facts(name))
    want = golden.expected(request.config, "identities", name, got)
    assert json.dumps(got) == json.dumps(want)  # values, and key order too


def test_every_registered_objective_is_pinned(request):
    if golden.updating(request.config):
        pytest.skip("regenerating the file")
    assert set(json.loads(golden.PATH.read_text(encoding="utf-8"))["identities"]) == set(NAMES)

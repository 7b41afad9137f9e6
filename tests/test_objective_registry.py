"""The objective registry's decorator, the keyword-only shared losses, and the layer-pair loop of LayerObjective."""
from __future__ import annotations

import pytest
import torch

from distilbench.config import RunConfig
from distilbench.objectives import OBJECTIVES, Context, LossOutput, Needs, Objective, Outputs, register_objective
from distilbench.objectives import functional as Fn
from distilbench.objectives.layerwise import LayerObjective
from distilbench.data.tasks import get_task


@pytest.fixture
def cleanup():
    names = []
    yield names
    for name in names:
        OBJECTIVES._entries.pop(name, None)
        for alias in [a for a, n in OBJECTIVES._aliases.items() if n == name]:
            del OBJECTIVES._aliases[alias]


def test_register_objective_sets_the_name_and_refuses_what_it_cannot_register(cleanup):
    @register_objective("t-reg", aliases=("t-reg-alias",))
    class _Reg(Objective):
        version, paper = "1", "test"

        def forward(self, student, teacher, batch, stage):
            return LossOutput(student.logits.sum(), {})

    cleanup.append("t-reg")
    assert _Reg.name == "t-reg" and OBJECTIVES.get("t-reg") is _Reg and OBJECTIVES.get("t-reg-alias") is _Reg
    with pytest.raises(ValueError, match="already registered"):
        register_objective("t-reg")(type("_Again", (Objective,), {}))
    with pytest.raises(ValueError, match="whose name is 'other'"):
        register_objective("t-reg-2")(type("_Named", (Objective,), {"name": "other"}))
    with pytest.raises(TypeError, match="Objective subclasses"):
        register_objective("t-reg-3")(int)
    assert "t-reg-2" not in OBJECTIVES and "t-reg-3" not in OBJECTIVES


@pytest.mark.parametrize("loss", [Fn.masked_mse, Fn.masked_score_mse, Fn.masked_row_kl, Fn.logit_kl])
def test_shared_losses_take_student_and_teacher_by_keyword_only(loss):
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(TypeError):
        loss(x, x, torch.ones(1, 2))


def test_masked_row_kl_is_kl_of_the_teacher_from_the_student():
    """One head, one row over two real keys (the third padded): KL(p_T || p_S) by hand, and not KL(p_S || p_T)."""
    mask = torch.tensor([[1, 1, 0]])
    s = torch.tensor([0.0, 1.0, 9.0]).expand(1, 1, 3, 3)
    t = torch.tensor([2.0, 0.0, -9.0]).expand(1, 1, 3, 3)
    p_s, p_t = s[0, 0, 0, :2].softmax(-1), t[0, 0, 0, :2].softmax(-1)
    want = (p_t * (p_t.log() - p_s.log())).sum()  # each of the two real rows is the same row
    got = Fn.masked_row_kl(student=s, teacher=t, mask=mask)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    assert Fn.masked_row_kl(student=t, teacher=s, mask=mask).item() != pytest.approx(want.item(), abs=1e-3)


def test_a_layer_objective_writes_one_pair_loss_and_gets_the_sum_over_pairs():
    class _Pairs(LayerObjective):
        name, version, paper = "t-pairs", "1", "test"
        needs = Needs(hidden_states=True)

        def pair_loss(self, student, teacher, s, t, k, batch):
            return torch.tensor(100.0 * s + 10.0 * t + k)

    ctx = Context(get_task("rte"), RunConfig(), [(1, 2), (2, 4), (3, 6)], 4, 4)
    out = Outputs(torch.zeros(2, 2))
    assert _Pairs(ctx).intermediate(out, out, {}).item() == 600 + 120 + 3


def test_a_lazy_entry_is_passed_to_on_load_once_when_resolved():
    """Entry-point objectives are registered as "module:attr" strings; the registry's ``on_load`` (for objectives:
    declaring their options) runs when one is first resolved, once."""
    from distilbench.plugins import Registry

    seen = []
    registry = Registry("thing", on_load=lambda obj: seen.append(obj) or obj)
    registry.register("path-join", "os.path:join")
    import os.path

    assert seen == []
    assert registry.get("path-join") is os.path.join and registry.get("path-join") is os.path.join
    assert seen == [os.path.join]

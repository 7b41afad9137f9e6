"""The frame shared by intermediate-layer objectives: layer pairs, schedules, and `+` combinations."""
from __future__ import annotations

import pytest
import torch

from distilbench.config import RunConfig
from distilbench.errors import UsageError
from distilbench.models.inits import parse_init
from distilbench.objectives import OBJECTIVES, Context, Needs, Outputs, Stage, get_objective
from distilbench.objectives.layerwise import LayerObjective
from distilbench.training.runs.pairs import distillation_pairs
from distilbench.data.tasks import get_task


@pytest.mark.parametrize("spec,init,expected", [
    ("init", "layers:1,8,12", [(1, 1), (2, 8), (3, 12)]),
    ("init", "random", [(1, 4), (2, 8), (3, 12)]),
    ("uniform", "first-k", [(1, 4), (2, 8), (3, 12)]),
    ("last", "first-k", [(3, 12)]),
    ("2,7,11", "first-k", [(1, 2), (2, 7), (3, 11)]),
])
def test_distillation_pairs(spec, init, expected):
    assert distillation_pairs(spec, parse_init(init, 12, 3), 3, 12) == expected


def test_ted_mapping_is_2k_minus_1_then_2k():
    # paper 001 §5.3: M(k) = 2k - 1 for k <= K/2, 2k otherwise (K = 6 student layers, 12 teacher layers)
    pairs = distillation_pairs("ted", parse_init("random", 12, 6), 6, 12)
    assert pairs == [(1, 1), (2, 3), (3, 5), (4, 8), (5, 10), (6, 12)]


@pytest.mark.parametrize("spec,needle", [("1,2", "2 teacher layers for a student of 3"), ("1,2,13", "1..12"), ("middle", "init, uniform")])
def test_bad_layer_maps(spec, needle):
    with pytest.raises(UsageError, match=needle):
        distillation_pairs(spec, parse_init("first-k", 12, 3), 3, 12)


class _SquareGap(LayerObjective):
    """Stand-in intermediate term: sum over pairs of mean((h_S - h_T)^2)."""
    name, version, paper = "t-square", "1", "test"
    needs = Needs(hidden_states=True)

    def intermediate(self, s, t, batch):
        return sum(((s.hidden_states[i] - t.hidden_states[j]) ** 2).mean() for i, j in self.ctx.layer_map)


class _AbsGap(LayerObjective):
    name, version, paper = "t-abs", "1", "test"
    needs = Needs(hidden_states=True, token_aligned=True)

    def intermediate(self, s, t, batch):
        return sum((s.hidden_states[i] - t.hidden_states[j]).abs().mean() for i, j in self.ctx.layer_map)


@pytest.fixture
def registered():
    for cls in (_SquareGap, _AbsGap):
        OBJECTIVES.register(cls.name, cls)
    yield
    for cls in (_SquareGap, _AbsGap):
        del OBJECTIVES._entries[cls.name]


def _inputs(cfg):
    torch.manual_seed(0)
    ctx = Context(get_task("rte"), cfg, [(1, 2), (2, 4)], 4, 4)
    s = Outputs(torch.randn(3, 2), tuple(torch.randn(3, 5, 4) for _ in range(3)))
    t = Outputs(torch.randn(3, 2), tuple(torch.randn(3, 5, 4) for _ in range(5)))
    return ctx, s, t, {"labels": torch.tensor([0, 1, 1])}


def test_combination_is_weighted_sum_of_parts(registered):
    cfg = RunConfig(beta=0.7, alpha_kd=0.3, temperature=2.0)
    ctx, s, t, batch = _inputs(cfg)
    combo = get_objective("t-square+0.25*t-abs")(ctx)
    a, b = _SquareGap(ctx), _AbsGap(ctx)
    out = combo(s, t, batch, Stage("distil"))
    inter_a, inter_b = a.intermediate(s, t, batch), b.intermediate(s, t, batch)
    pred = _SquareGap(ctx)(s, t, batch, Stage("prediction")).loss
    assert out.loss.item() == pytest.approx((pred + 0.7 * (inter_a + 0.25 * inter_b)).item(), rel=1e-6)
    assert out.terms["t-square"].item() == pytest.approx(inter_a.item())
    assert out.terms["t-abs"].item() == pytest.approx(inter_b.item())
    assert combo.name == "t-square+0.25*t-abs"
    assert combo.needs == Needs(hidden_states=True, token_aligned=True)


def test_schedules(registered):
    cfg = RunConfig(beta=2.0, alpha_kd=0.5, temperature=3.0, schedule="sequential")
    ctx, s, t, batch = _inputs(cfg)
    obj = _SquareGap(ctx)
    assert [st.name for st in obj.stages()] == ["intermediate", "prediction"]
    inter = obj.intermediate(s, t, batch)
    assert obj(s, t, batch, Stage("intermediate")).loss.item() == pytest.approx(inter.item())
    ce = torch.nn.functional.cross_entropy(s.logits, batch["labels"])
    p_t, log_p_s = torch.softmax(t.logits / 3, -1), torch.log_softmax(s.logits / 3, -1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    assert obj(s, t, batch, Stage("prediction")).loss.item() == pytest.approx((ce + 0.5 * 9 * kl).item(), rel=1e-5)
    joint = obj(s, t, batch, Stage("distil")).loss
    assert joint.item() == pytest.approx((ce + 0.5 * 9 * kl + 2.0 * inter).item(), rel=1e-5)
    assert [st.name for st in _SquareGap(Context(get_task("rte"), RunConfig(), [(1, 2)], 4, 4)).stages()] == ["distil"]


@pytest.mark.parametrize("spec,needle", [("kd+t-square", "only intermediate-layer objectives"), ("t-square+t-square", "twice"),
                                         ("t-square+x*y*z", "cannot read"), ("t-square+hid-sq", "unknown objective")])
def test_bad_combinations(registered, spec, needle):
    with pytest.raises(UsageError, match=needle):
        get_objective(spec)

"""AutoSKD's core (paper 003) checked against hand computations: Eq. 8 teacher selection, Eq. 3 L_d, Eq. 4 mixture,
the Eq. 5/7 look-ahead gradient against closed forms and central finite differences, SSWO/CR steps, sampling."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoskd_reference import phase_of, search_step, split_distill_val
from distilbench.objectives.autoskd.core import (CategoricalTeachers, batch_loss_fn, candidate_distributions,
                                                 candidate_steps, cr_mixture, default_m, distill_loss,
                                                 lookahead_theta_grad, make_theta_optimizer, random_distribution,
                                                 theta_step, uniform_distribution)

D = torch.float64


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# --------------------------------------------------------------------------------------------- Eq. 8 teacher selection

def test_mask_smallest_matches_eq8_by_hand():
    cat = CategoricalTeachers(4, init=[0.4, 0.1, 0.3, 0.2], dtype=D)
    dropped = cat.mask_smallest(2)
    assert dropped == [1, 3]
    assert torch.allclose(cat.probs(), torch.tensor([0.4 / 0.7, 0.0, 0.3 / 0.7, 0.0], dtype=D), atol=1e-15, rtol=0)
    assert cat.active.tolist() == [True, False, True, False]


def test_mask_smallest_uses_p1_norm_with_eps():
    # raw weights that do not sum to 1: Eq. 8 divides by the L1 norm of the kept part: [2, 0, 3, 4] / 9
    cat = CategoricalTeachers(4, init=[2.0, 1.0, 3.0, 4.0], dtype=D)
    cat.mask_smallest(1)
    assert torch.allclose(cat.probs(), torch.tensor([2 / 9, 0, 3 / 9, 4 / 9], dtype=D), atol=1e-15, rtol=0)
    with pytest.raises(ValueError):
        cat.mask_smallest(3)  # would leave no teacher


def test_masked_teachers_never_sampled_nor_revived():
    cat = CategoricalTeachers(4, init=[0.4, 0.1, 0.3, 0.2], dtype=D)
    cat.mask_smallest(2)
    g = torch.Generator().manual_seed(0)
    draws = {cat.sample(g) for _ in range(3000)}
    assert draws == {0, 2}
    opt = make_theta_optimizer(cat, lr=0.05)
    for _ in range(50):  # CR steps push a gradient at every coordinate, including the discarded ones
        theta_step(opt, cat, torch.randn(4, generator=g, dtype=D), "cr")
        assert cat.probs()[1] == 0 and cat.probs()[3] == 0
    assert {cat.sample(g) for _ in range(2000)} <= {0, 2}


# --------------------------------------------------------------------------------------------- SSWO / CR updates

def _warm(cat, opt, g, steps=5):
    for _ in range(steps):  # give every coordinate Adam momentum, so a naive step would move them all
        theta_step(opt, cat, torch.randn(cat.n, generator=g, dtype=D), "cr")


def test_sswo_step_moves_only_the_sampled_raw_weight():
    g = torch.Generator().manual_seed(1)
    cat = CategoricalTeachers(5, dtype=D)
    opt = make_theta_optimizer(cat, lr=1e-2)
    _warm(cat, opt, g)
    before = cat.theta.detach().clone()
    m_before = opt.state[cat.theta]["exp_avg"].clone()
    v_before = opt.state[cat.theta]["exp_avg_sq"].clone()
    grad = torch.zeros(5, dtype=D)
    grad[2] = 0.7
    # compared: the raw parameter theta right after the optimiser step, before the simplex projection
    theta_step(opt, cat, grad, "sswo", sampled=2, renormalise=False)
    after = cat.theta.detach().clone()
    others = [0, 1, 3, 4]
    assert torch.equal(after[others], before[others])  # bit for bit
    assert after[2] < before[2]  # positive gradient, descended
    assert torch.equal(opt.state[cat.theta]["exp_avg"][others], m_before[others])
    assert torch.equal(opt.state[cat.theta]["exp_avg_sq"][others], v_before[others])
    # after the projection every weight is the raw one times one common factor: the others' ratios are unchanged
    cat.project_()
    scale = 1.0 / after.sum()
    assert torch.allclose(cat.probs(), after * scale, atol=1e-15, rtol=0)
    assert abs(float(cat.probs().sum()) - 1) < 1e-12


def test_naive_adam_would_move_other_weights():
    """Control for the test above: a plain Adam step with a one-hot gradient moves the others (momentum + decay)."""
    g = torch.Generator().manual_seed(1)
    cat = CategoricalTeachers(5, dtype=D)
    opt = make_theta_optimizer(cat, lr=1e-2)
    _warm(cat, opt, g)
    before = cat.theta.detach().clone()
    cat.theta.grad = torch.tensor([0, 0, 0.7, 0, 0], dtype=D)
    opt.step()
    assert not torch.equal(cat.theta.detach()[[0, 1, 3, 4]], before[[0, 1, 3, 4]])


@pytest.mark.parametrize("mode", ["sswo", "cr"])
def test_theta_stays_a_distribution_over_many_random_steps(mode):
    g = torch.Generator().manual_seed(2)
    cat = CategoricalTeachers(6, dtype=D)
    opt = make_theta_optimizer(cat, lr=0.05)  # large steps: coordinates hit the clamp at 0
    hit_zero = False
    for step in range(300):
        if step == 150:
            cat.mask_smallest(2)
        i = cat.sample(g)
        theta_step(opt, cat, 3 * torch.randn(6, generator=g, dtype=D), mode, sampled=i)
        p = cat.probs()
        assert abs(float(p.sum()) - 1.0) < 1e-6
        assert bool((p >= 0).all())
        assert bool((p[~cat.active] == 0).all())
        hit_zero |= bool((p[cat.active] == 0).any())
    assert cat.active.sum() == 4
    assert hit_zero  # the clamp was exercised


def test_sswo_grad_is_one_hot_and_cr_grad_is_not():
    torch.manual_seed(0)
    student = nn.Linear(2, 3, bias=False).double()
    x, xv = torch.randn(4, 2, dtype=D), torch.randn(4, 2, dtype=D)
    tl = [torch.randn(4, 3, dtype=D) * 3 for _ in range(3)]
    tv = [torch.randn(4, 3, dtype=D) * 3 for _ in range(3)]
    cat = CategoricalTeachers(3, init=[0.5, 0.3, 0.2], dtype=D)
    g = lookahead_theta_grad(student, cat, batch_loss_fn(student, x, tl, "sswo", 1),
                             batch_loss_fn(student, xv, tv, "sswo", 1), 0.1, "sswo", 1)
    assert g[0] == 0 and g[2] == 0 and g[1] != 0
    g = lookahead_theta_grad(student, cat, batch_loss_fn(student, x, tl, "cr", active=cat.active),
                             batch_loss_fn(student, xv, tv, "cr", active=cat.active), 0.1, "cr")
    assert bool((g != 0).all())


# --------------------------------------------------------------------------------------------- Eq. 4 and Eq. 3

def test_cr_mixture_by_hand():
    theta = torch.tensor([0.2, 0.5, 0.3], dtype=D)
    z = [torch.tensor([[1.0, -2.0]], dtype=D), torch.tensor([[0.5, 4.0]], dtype=D), torch.tensor([[-3.0, 2.0]], dtype=D)]
    hand = torch.tensor([[0.2 * 1 + 0.5 * 0.5 + 0.3 * -3, 0.2 * -2 + 0.5 * 4 + 0.3 * 2]], dtype=D)  # [-0.45, 2.2]
    assert torch.allclose(cr_mixture(theta, z), hand, atol=1e-15, rtol=0)
    assert torch.allclose(cr_mixture(theta, z[::2], indices=[0, 2]), torch.tensor([[0.2 - 0.9, -0.4 + 0.6]], dtype=D))


def test_distill_loss_by_hand():
    zs = [[1.0, 0.0, -1.0], [0.2, 0.3, 2.0]]
    zt = [[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5]]
    theta_i, t = 0.4, 2.0
    soft = kl = ce = 0.0
    for s_row, t_row, y in zip(zs, zt, [0, 2]):
        p = _softmax([theta_i * v / t for v in t_row])
        q = _softmax([v / t for v in s_row])
        soft += -sum(a * math.log(b) for a, b in zip(p, q)) / 2
        kl += sum(a * math.log(a / b) for a, b in zip(p, q)) / 2
        ce += -math.log(_softmax(s_row)[y]) / 2
    S, T = torch.tensor(zs, dtype=D), torch.tensor(zt, dtype=D)
    labels = torch.tensor([0, 2])
    assert distill_loss(S, T, theta_i, temperature=t).item() == pytest.approx(soft, abs=1e-12)
    assert distill_loss(S, T, theta_i, temperature=t, kind="kl").item() == pytest.approx(kl, abs=1e-12)
    assert distill_loss(S, T, theta_i, labels, temperature=t, hard_label_weight=0.5).item() == \
        pytest.approx(soft + 0.5 * ce, abs=1e-12)
    # θ_i really scales the teacher: θ_i = 1 is a different (sharper) target
    assert abs(distill_loss(S, T, 1.0, temperature=t).item() - soft) > 1e-3


def test_batch_loss_fn_sswo_and_cr_by_hand():
    student = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 1.0]], dtype=D)  # student logits [1, 2]
    z = [torch.tensor([[2.0, 0.0]], dtype=D), torch.tensor([[0.0, 4.0]], dtype=D)]
    theta = torch.tensor([0.25, 0.75], dtype=D)
    params = dict(student.named_parameters())
    q = _softmax([1.0, 2.0])
    p = _softmax([0.75 * 0.0, 0.75 * 4.0])  # SSWO with teacher 1: θ_1 · z_1
    assert batch_loss_fn(student, x, z, "sswo", 1)(params, theta).item() == \
        pytest.approx(-sum(a * math.log(b) for a, b in zip(p, q)), abs=1e-12)
    p = _softmax([0.25 * 2.0, 0.75 * 4.0])  # CR mixture [0.5, 3.0]
    assert batch_loss_fn(student, x, z, "cr")(params, theta).item() == \
        pytest.approx(-sum(a * math.log(b) for a, b in zip(p, q)), abs=1e-12)
    calls = []
    lazy = lambda i: calls.append(i) or z[i]  # noqa: E731
    batch_loss_fn(student, x, lazy, "sswo", 0)(params, theta)
    assert calls == [0]  # under SSWO only the sampled teacher runs


# --------------------------------------------------------------------------------------------- Eq. 5 / Eq. 7 look-ahead

class Vector(nn.Module):
    """A 'student' whose logits are its 3 parameters (one example)."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=D))

    def forward(self, x):
        return self.w.unsqueeze(0)


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_lookahead_closed_form_quadratic_cr(method):
    """L_train = ½‖w − Aθ‖², L_val = ½‖w − b‖²: w' = (1−ξ)w + ξAθ, so ∇_θ L_val(w', θ) = ξ Aᵀ(w' − b)."""
    A = torch.tensor([[1.0, -2.0], [0.5, 3.0], [2.0, 1.0]], dtype=D)  # column i: teacher i's logits
    b = torch.tensor([0.3, -0.7, 1.1], dtype=D)
    student = Vector([0.2, 0.4, -0.5])
    cat = CategoricalTeachers(2, init=[0.6, 0.4], dtype=D)
    xi = 0.3
    train = lambda prm, th: 0.5 * ((prm["w"] - A @ th) ** 2).sum()  # noqa: E731
    val = lambda prm, th: 0.5 * ((prm["w"] - b) ** 2).sum()  # noqa: E731
    theta, w = cat.probs(), student.w.detach()
    w_next = (1 - xi) * w + xi * A @ theta
    hand = xi * A.T @ (w_next - b)
    got = lookahead_theta_grad(student, cat, train, val, xi, "cr", method=method)
    assert torch.allclose(got, hand, atol=1e-9, rtol=0)
    assert torch.equal(student.w.detach(), w)  # the look-ahead never changes the student


def _ce_problem():
    torch.manual_seed(3)
    student = nn.Linear(2, 3, bias=False).double()
    x, xv = torch.randn(5, 2, dtype=D), torch.randn(5, 2, dtype=D)
    tl = [torch.randn(5, 3, dtype=D) * 2 for _ in range(2)]
    tv = [torch.randn(5, 3, dtype=D) * 2 for _ in range(2)]
    return student, x, xv, tl, tv


def _F(student, train, val, theta, xi):
    """θ ↦ L_val(w − ξ ∇_w L_train(w, θ), θ), computed directly (no differentiation through θ)."""
    w = student.weight.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(train({"weight": w}, theta), [w])
    return float(val({"weight": w.detach() - xi * g}, theta))


@pytest.mark.parametrize("mode,sampled", [("cr", None), ("sswo", 0), ("sswo", 1)])
@pytest.mark.parametrize("method,tol", [("exact", 1e-8), ("finite_difference", 1e-4)])
def test_lookahead_matches_central_differences_ce(mode, sampled, method, tol):
    student, x, xv, tl, tv = _ce_problem()
    cat = CategoricalTeachers(2, init=[0.7, 0.3], dtype=D)
    xi, h = 0.5, 1e-6
    train = batch_loss_fn(student, x, tl, mode, sampled, cat.active)
    val = batch_loss_fn(student, xv, tv, mode, sampled, cat.active)
    got = lookahead_theta_grad(student, cat, train, val, xi, mode, sampled, method=method)
    theta = cat.probs()
    fd = torch.zeros(2, dtype=D)
    for j in range(2):
        e = torch.zeros(2, dtype=D)
        e[j] = h
        fd[j] = (_F(student, train, val, theta + e, xi) - _F(student, train, val, theta - e, xi)) / (2 * h)
    assert torch.allclose(got, fd, atol=tol, rtol=0), (got, fd)
    if mode == "sswo":
        assert fd[1 - sampled] == 0 and got[1 - sampled] == 0
    # the second-order term matters here: ξ = 0 (first order) gives a clearly different gradient
    first = lookahead_theta_grad(student, cat, train, val, 0.0, mode, sampled)
    assert (first - got).abs().max() > 100 * tol


# --------------------------------------------------------------------------------------------- sampling and the rest

def test_sampling_frequencies_match_theta():
    theta = [0.5, 0.2, 0.2, 0.1]
    cat = CategoricalTeachers(4, init=theta, dtype=D)
    g = torch.Generator().manual_seed(4)
    n = 20000
    counts = torch.bincount(torch.tensor([cat.sample(g) for _ in range(n)]), minlength=4).double()
    chi2 = lambda probs: float((((counts - n * torch.tensor(probs, dtype=D)) ** 2) / (n * torch.tensor(probs, dtype=D))).sum())  # noqa: E731
    assert chi2(theta) < 16.27  # chi-square, 3 dof, p = 0.001
    assert chi2([0.45, 0.25, 0.2, 0.1]) > 100  # the test can tell a slightly different θ apart


def test_phases_and_candidates():
    assert [phase_of(s, 10) for s in range(10)] == [1] * 5 + [2] * 5
    assert [phase_of(s, 7) for s in range(7)] == [1] * 4 + [2] * 3  # n < N/2 = 3.5
    assert candidate_steps(100, 25) == list(range(3, 100, 4))
    assert candidate_steps(10, 3) == [3, 6, 9]
    history = [torch.tensor([s, 1.0]) for s in range(50)]
    cands = candidate_distributions(history, 25)
    assert [int(c[0]) for c in cands] == list(range(1, 50, 2))
    assert cands[-1] is not history[-1]  # copies
    with pytest.raises(ValueError):
        candidate_steps(10, 11)


def test_default_m():
    scores = [50.0, 55.0, 60.0, 70.0, 80.0]
    assert default_m(scores, 58.0) == 2
    assert default_m(scores, 58.0, same_as_student=[False, False, True, False, False]) == 3  # the student's own copy
    assert default_m(scores, 90.0) == 4  # one teacher must remain
    assert default_m(scores, 40.0) == 0


def test_random_and_uniform_distributions():
    g = torch.Generator().manual_seed(5)
    draws = torch.stack([random_distribution(4, g) for _ in range(4000)])
    assert torch.allclose(draws.sum(1), torch.ones(4000, dtype=D), atol=1e-12)
    assert bool((draws >= 0).all())
    assert torch.allclose(draws.mean(0), torch.full((4,), 0.25, dtype=D), atol=0.01)  # flat Dirichlet mean
    assert float(draws[:, 0].var()) == pytest.approx(3 / 80, rel=0.1)  # Dir(1,1,1,1) marginal variance
    assert torch.equal(random_distribution(4, torch.Generator().manual_seed(9)),
                       random_distribution(4, torch.Generator().manual_seed(9)))
    assert torch.equal(uniform_distribution(4), torch.full((4,), 0.25, dtype=D))


def test_split_distill_val_is_a_seeded_half_partition():
    a, b = split_distill_val(11, torch.Generator().manual_seed(0))
    assert len(a) == 6 and len(b) == 5
    assert sorted(torch.cat([a, b]).tolist()) == list(range(11))
    a2, _ = split_distill_val(11, torch.Generator().manual_seed(0))
    assert torch.equal(a, a2)


@pytest.mark.parametrize("mode", ["sswo", "cr"])
def test_search_step_runs_algorithm1_body(mode):
    student, x, xv, tl, tv = _ce_problem()
    tl, tv = tl + [tl[0] * -1], tv + [tv[0] * -1]
    cat = CategoricalTeachers(3, dtype=D)
    topt = make_theta_optimizer(cat, lr=1e-2)
    sopt = torch.optim.Adam(student.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(6)
    w0 = student.weight.detach().clone()
    for step in range(20):
        if step == 10:
            cat.mask_smallest(1)
        before = cat.probs()
        out = search_step(student, sopt, cat, topt, x, tl, xv, tv, xi=0.1, mode=mode, generator=g)
        after = cat.probs()
        assert cat.active[out["teacher"]]
        assert abs(float(after.sum()) - 1) < 1e-12
        if mode == "sswo":  # only the sampled weight changed before renormalisation: the others' ratio is intact
            others = [k for k in range(3) if k != out["teacher"] and cat.active[k]]
            if len(others) == 2:
                assert after[others[0]] / after[others[1]] == pytest.approx(float(before[others[0]] / before[others[1]]), rel=1e-12)
    assert not torch.equal(student.weight.detach(), w0)
    assert int(cat.active.sum()) == 2

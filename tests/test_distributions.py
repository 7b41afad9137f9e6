"""The divergences of class and next-token distributions (kd on token logits, kd-reverse, gkd-jsd), recomputed by hand
from their formulas with plain Python sums on padded sequences, and the top-k teacher's KL error, measured against the
exact KL and bounded."""
from __future__ import annotations

import math

import pytest
import torch

from distilbench.config import RunConfig
from distilbench.data.tasks import get_task
from distilbench.errors import UsageError
from distilbench.objectives import Context, Outputs, Stage, get_objective
from distilbench.objectives import distributions as D
from distilbench.objectives.functional import logit_kl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, L, V = 2, 4, 5
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def _softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _jsd(p_s, p_t, beta):
    """TRL's generalised JSD, written out: beta*KL(p_T||M) + (1-beta)*KL(p_S||M), M = beta*p_T + (1-beta)*p_S."""
    if beta == 0:
        return _kl(p_t, p_s)
    if beta == 1:
        return _kl(p_s, p_t)
    m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s)]
    return beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)


def _hand(zs, zt, mask, divergence, t=1.0):
    """Mean over the real positions of divergence(p_S, p_T), both at temperature t."""
    vals = [divergence(_softmax(zs[b][i], t), _softmax(zt[b][i], t))
            for b in range(len(mask)) for i in range(len(mask[b])) if mask[b][i]]
    return sum(vals) / len(vals)


def _hand_nll(zs, labels):
    """Mean next-token NLL: position i predicts labels[i + 1]; -100 is no target."""
    terms = [-math.log(_softmax(zs[b][i])[labels[b][i + 1]])
             for b in range(len(labels)) for i in range(len(labels[b]) - 1) if labels[b][i + 1] != -100]
    return sum(terms) / len(terms)


def _token_logits(seed, poison=True):
    """[B, L, V] logits; the padded positions hold NaN and inf, which must change nothing."""
    g = torch.Generator().manual_seed(seed)
    z = 2.0 * torch.randn(B, L, V, generator=g)
    if poison:
        z[1, 2] = float("nan")
        z[1, 3] = float("inf")
    return z


def _clean(z):
    return [[[0.0 if not math.isfinite(v) else v for v in pos] for pos in seq] for seq in z.tolist()]


REVERSE = lambda p_s, p_t: _kl(p_s, p_t)  # noqa: E731
FORWARD = lambda p_s, p_t: _kl(p_t, p_s)  # noqa: E731


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_token_divergences_match_their_formulas_on_padded_sequences(t):
    zs, zt = _token_logits(0), _token_logits(1)
    hs, ht, m = _clean(zs), _clean(zt), MASK.tolist()
    assert D.forward_kl(student=zs, teacher=zt, mask=MASK, temperature=t).item() == pytest.approx(_hand(hs, ht, m, FORWARD, t), rel=1e-5)
    assert D.reverse_kl(student=zs, teacher=zt, mask=MASK, temperature=t).item() == pytest.approx(_hand(hs, ht, m, REVERSE, t), rel=1e-5)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        want = _hand(hs, ht, m, lambda p_s, p_t: _jsd(p_s, p_t, beta), t)
        got = D.generalized_jsd(student=zs, teacher=zt, beta=beta, mask=MASK, temperature=t).item()
        assert got == pytest.approx(want, rel=1e-5), beta


def test_gkd_end_points_are_the_two_kls_as_trl_defines_them():
    """beta = 0: KL(p_T || p_S) (forward); beta = 1: KL(p_S || p_T) (reverse); just inside, the interior is beta (or
    1 - beta) times that KL, to first order."""
    zs, zt = _token_logits(2), _token_logits(3)
    fwd = D.forward_kl(student=zs, teacher=zt, mask=MASK)
    rev = D.reverse_kl(student=zs, teacher=zt, mask=MASK)
    assert D.generalized_jsd(student=zs, teacher=zt, beta=0.0, mask=MASK).item() == pytest.approx(fwd.item(), rel=1e-6)
    assert D.generalized_jsd(student=zs, teacher=zt, beta=1.0, mask=MASK).item() == pytest.approx(rev.item(), rel=1e-6)
    assert fwd.item() != pytest.approx(rev.item(), rel=1e-2)
    eps = 1e-3
    near0 = D.generalized_jsd(student=zs.double(), teacher=zt.double(), beta=eps, mask=MASK).item()
    near1 = D.generalized_jsd(student=zs.double(), teacher=zt.double(), beta=1 - eps, mask=MASK).item()
    assert near0 / eps == pytest.approx(fwd.item(), rel=2e-2)
    assert near1 / eps == pytest.approx(rev.item(), rel=2e-2)


def test_class_logits_give_the_batch_mean_and_forward_kl_is_logit_kl():
    zs, zt = torch.tensor([[0.3, -1.2, 2.0], [2.0, 0.5, -0.1]]), torch.tensor([[1.5, -0.5, 0.0], [0.2, 0.9, 3.0]])
    hs, ht = zs.tolist(), zt.tolist()
    assert D.forward_kl(student=zs, teacher=zt, temperature=2.0).item() == pytest.approx(logit_kl(student=zs, teacher=zt, temperature=2.0).item(), rel=1e-6)
    want = sum(_kl(_softmax(a, 2.0), _softmax(b, 2.0)) for a, b in zip(hs, ht)) / 2
    assert D.reverse_kl(student=zs, teacher=zt, temperature=2.0).item() == pytest.approx(want, rel=1e-5)


def _objective(name, task="rte", **cfg):
    return get_objective(name)(Context(get_task(task), RunConfig(**cfg), [(1, 2)], 8, 8))


def _lm_batch():
    ids = torch.tensor([[3, 1, 4, 0], [2, 4, 0, 0]])
    labels = ids.masked_fill(MASK == 0, -100)
    return {"input_ids": ids, "attention_mask": MASK, "labels": labels}


@pytest.mark.parametrize("name, divergence", [("kd", FORWARD), ("kd-reverse", REVERSE),
                                              ("gkd-jsd", lambda p_s, p_t: _jsd(p_s, p_t, 0.5))])
def test_objectives_on_token_logits_are_ce_plus_alpha_t2_divergence(name, divergence):
    t, alpha = 2.0, 0.5
    zs, zt, batch = _token_logits(4), _token_logits(5), _lm_batch()
    out = _objective(name, temperature=t, alpha_kd=alpha)(Outputs(zs), Outputs(zt), batch, Stage("distil"))
    ce = _hand_nll(_clean(zs), batch["labels"].tolist())
    soft = _hand(_clean(zs), _clean(zt), MASK.tolist(), divergence, t)
    assert out.terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out.terms[name].item() == pytest.approx(soft, rel=1e-5)
    assert out.loss.item() == pytest.approx(ce + alpha * t * t * soft, rel=1e-5)


def test_gkd_objective_at_beta_0_and_1_is_kd_and_kd_reverse():
    zs, zt, batch = _token_logits(6), _token_logits(7), _lm_batch()
    run = lambda name, **kw: _objective(name, **kw)(Outputs(zs), Outputs(zt), batch, Stage("d")).loss.item()  # noqa: E731
    assert run("gkd-jsd", gkd_beta=0.0) == pytest.approx(run("kd"), rel=1e-6)
    assert run("gkd-jsd", gkd_beta=1.0) == pytest.approx(run("kd-reverse"), rel=1e-6)
    assert run("kd-reverse") != pytest.approx(run("kd"), rel=1e-3)  # asymmetric inputs: the two directions differ


@pytest.mark.parametrize("name", ["kd", "kd-reverse", "gkd-jsd"])
def test_gradients_reach_the_student_logits_and_not_the_teacher(name):
    zs = _token_logits(8).requires_grad_()
    zt = _token_logits(9).requires_grad_()
    _objective(name)(Outputs(zs), Outputs(zt), _lm_batch(), Stage("d")).loss.backward()
    assert zt.grad is None
    real = MASK.bool()
    assert torch.isfinite(zs.grad).all()
    assert (zs.grad[real].abs().sum(-1) > 0).all()  # every real position learns
    assert (zs.grad[~real] == 0).all()  # padded positions (NaN, inf) pass nothing


def test_registered_with_aliases_and_refuse_regression():
    assert get_objective("reverse-kl") is get_objective("kd-reverse")
    assert get_objective("jsd") is get_objective("gkd-jsd")
    for name in ("kd-reverse", "gkd-jsd"):
        with pytest.raises(UsageError, match="regression"):
            _objective(name, task="stsb")
    for bad in (-0.1, 1.5):
        with pytest.raises(UsageError, match="--gkd-beta"):
            RunConfig(gkd_beta=bad).validate()


# ------------------------------------------------------------------------------------------------ the top-k teacher


def _zipf_teacher(vocab, rows, seed, spread=1.0):
    """Next-token logits shaped like a language model's: log-probabilities ~ -s * log(rank), shuffled per row."""
    g = torch.Generator().manual_seed(seed)
    base = -spread * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
    return torch.stack([base[torch.randperm(vocab, generator=g)] for _ in range(rows)]) + 0.3 * torch.randn(rows, vocab, generator=g)


def test_topk_teacher_holds_the_top_tokens_and_the_rest_mass():
    z = torch.tensor([[2.0, 0.0, 1.0, -1.0, 0.5]])
    top = D.topk_teacher(z, 2, temperature=2.0)
    p = (z / 2.0).softmax(-1)
    assert top.indices.tolist() == [[0, 2]]
    assert top.log_probs.exp()[0].tolist() == pytest.approx([p[0, 0].item(), p[0, 2].item()], rel=1e-6)
    assert top.log_rest.exp().item() == pytest.approx(p[0, [1, 3, 4]].sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="k="):
        D.topk_teacher(z, 6)
    with pytest.raises(ValueError, match="temperature"):
        D.forward_kl(student=z, teacher=top, temperature=1.0)


def test_topk_kl_error_is_the_teacher_tail_term_and_stays_within_its_bound():
    """exact - top-k = r_T * KL(tail_T || tail_S) >= 0 per row (chain rule), and <= topk_kl_error_bound."""
    zt, zs = _zipf_teacher(200, 12, 0), _zipf_teacher(200, 12, 1)
    for k in (1, 5, 20, 100):
        top = D.topk_teacher(zt, k)
        exact = D.kl_rows(zt.log_softmax(-1), zs.log_softmax(-1))
        logq, logp = D.coarse_log_probs(zs, top, 1.0)
        approx = D.kl_rows(logp, logq)
        tail = torch.ones_like(zt, dtype=torch.bool).scatter(-1, top.indices, False)
        pt = zt.masked_fill(~tail, -math.inf).log_softmax(-1)
        qt = zs.masked_fill(~tail, -math.inf).log_softmax(-1)
        gap = top.log_rest.exp() * D.kl_rows(pt, qt)
        assert (exact - approx).tolist() == pytest.approx(gap.tolist(), abs=2e-5)
        assert (exact - approx >= -1e-5).all()
        assert (exact - approx <= D.topk_kl_error_bound(student=zs, teacher=top) + 1e-5).all()
    full = D.topk_teacher(zt, 200)
    assert D.forward_kl(student=zs, teacher=full).item() == pytest.approx(D.forward_kl(student=zs, teacher=zt).item(), rel=1e-5)
    assert (D.topk_kl_error_bound(student=zs, teacher=full) == 0).all()


def test_topk_kl_is_exact_when_the_teacher_tail_is_shaped_like_the_students():
    zs = _zipf_teacher(50, 4, 2)
    zt = zs.clone()
    top_idx = zs.topk(3, -1).indices
    zt.scatter_(-1, top_idx, zs.gather(-1, top_idx) + torch.tensor([1.0, -0.5, 2.0]))  # reweight only the top-3
    top = D.topk_teacher(zt, 3)
    assert D.forward_kl(student=zs, teacher=top).item() == pytest.approx(D.forward_kl(student=zs, teacher=zt).item(), rel=1e-5)


def test_topk_kl_error_on_a_language_model_like_teacher_measured_and_bounded():
    """A 5,000-token vocabulary with Zipf-shaped teacher and student over padded sequences: the top-k KL's relative
    error (measured against the exact KL) falls with k and stays under the stated bound."""
    vocab, mask = 5000, torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    zt = _zipf_teacher(vocab, 16, 3, spread=1.5).reshape(2, 8, vocab)
    zs = (zt + 0.8 * torch.randn(2, 8, vocab, generator=torch.Generator().manual_seed(4))).requires_grad_()
    exact = D.forward_kl(student=zs, teacher=zt, mask=mask).item()
    errors = {}
    for k in (8, 64, 512):
        top = D.topk_teacher(zt, k)
        approx = D.forward_kl(student=zs, teacher=top, mask=mask)
        errors[k] = (exact - approx.item()) / exact
        bound = D.topk_kl_error_bound(student=zs, teacher=top, mask=mask).mean().item()
        assert 0 <= exact - approx.item() <= bound + 1e-5
    assert errors[8] > errors[64] > errors[512] >= 0
    # measured: 28.1% (k=8), 9.9% (k=64), 2.6% (k=512) of the exact KL, with teacher tail masses 25%, 8.7%, 2.3%;
    # the a-priori bound (from the cache and the student alone) is ~10x looser than the measured error
    assert errors[64] < 0.12 and errors[512] < 0.035, errors
    approx.backward()  # the student learns through the top-k form too
    assert torch.isfinite(zs.grad).all() and zs.grad[mask.bool()].abs().sum() > 0 and (zs.grad[~mask.bool()] == 0).all()


def test_topk_kl_gradient_fills_the_teacher_tail_with_the_students_shape():
    """d/dz_S of the top-k KL (T = 1) is q_S - p', p' = the teacher on its top-k and r_T * q_S(j) / r_S on the tail."""
    zt, zs = _zipf_teacher(30, 3, 5), _zipf_teacher(30, 3, 6).requires_grad_()
    top = D.topk_teacher(zt, 4)
    D.forward_kl(student=zs, teacher=top).backward()
    q = zs.detach().softmax(-1)
    tail = torch.ones_like(q, dtype=torch.bool).scatter(-1, top.indices, False)
    r_s = (q * tail).sum(-1, keepdim=True)
    filled = torch.where(tail, top.log_rest.exp()[:, None] * q / r_s, 0.0).scatter(-1, top.indices, top.log_probs.exp())
    assert filled.sum(-1).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    torch.testing.assert_close(zs.grad, (q - filled) / 3, rtol=0, atol=1e-6)  # / 3: the mean over the 3 rows

"""Att-MSE, Att-KL and Val-KL (paper 002 §3, "Attention and Value Transfer"), recomputed by hand.

Inputs are small random per-layer attention captures with padding (B = 3, L = 6, real lengths 6, 4, 3), a student of
2 layers against a teacher of 3 with the layer map (1, 2), (2, 3). The reference values are written with plain Python
loops over layer pairs, examples, heads, queries and keys (``math``, lists): they share no code with the objectives.
"""
from __future__ import annotations

import math

import pytest
import torch

from distilbench.config import RunConfig
from distilbench.errors import UsageError
from distilbench.objectives import Context, Needs, Outputs, Stage, get_objective
from distilbench.data.tasks import get_task

LENGTHS = (6, 4, 3)
B, L = 3, 6
LAYER_MAP = [(1, 2), (2, 3)]
NAMES = ("att-mse", "att-kl", "val-kl")


# --------------------------------------------------------------------------- inputs


def _mask() -> torch.Tensor:
    m = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        m[b, :n] = 1
    return m


def _layers(n_layers: int, heads: int, d_h: int, seed: int, grad: bool = False) -> list[dict]:
    """Random captures as ``capture`` gives them: independent pre-softmax scores (scale ~2), probs = softmax(scores +
    additive padding mask), q/k/v ``[B, H, L, d_h]``; leaf tensors (``requires_grad`` when ``grad``)."""
    g = torch.Generator().manual_seed(seed)
    additive = (1 - _mask()[:, None, None, :].float()) * torch.finfo(torch.float32).min
    out = []
    for _ in range(n_layers):
        scores = 2 * torch.randn(B, heads, L, L, generator=g)
        layer = {"scores": scores, "probs": torch.softmax(scores + additive, -1),
                 **{k: torch.randn(B, heads, L, d_h, generator=g) for k in ("q", "k", "v")}}
        out.append({k: v.requires_grad_(grad) for k, v in layer.items()})
    return out


def _outputs(layers: list[dict], seed: int, grad: bool = False) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    return Outputs(torch.randn(B, 2, generator=g).requires_grad_(grad), None, layers)


def _objective(name, student_heads=2, teacher_heads=2, student_hidden=8, teacher_hidden=8, layer_map=LAYER_MAP, **cfg):
    ctx = Context(get_task("rte"), RunConfig(**cfg), list(layer_map), student_hidden, teacher_hidden,
                  student_heads=student_heads, teacher_heads=teacher_heads)
    return get_objective(name)(ctx)


BATCH = {"attention_mask": _mask(), "labels": torch.tensor([1, 0, 1])}


def _pair(hs=2, ht=2, ds=4, dt=4, grad=False):
    """Student (2 layers, hs heads of size ds) and teacher (3 layers, ht heads of size dt) outputs."""
    return _outputs(_layers(2, hs, ds, 1, grad), 10, grad), _outputs(_layers(3, ht, dt, 2, grad), 20, grad)


# --------------------------------------------------------------------------- the formulas, by hand


def _softmax_real(row, n):
    """softmax over the first n (real) keys of a list."""
    top = max(row[:n])
    e = [math.exp(x - top) for x in row[:n]]
    z = sum(e)
    return [x / z for x in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _head_maps(x, b, average):
    """The per-head [L][L] maps of example b, or the single head-averaged map."""
    heads = x[b]
    if not average:
        return heads
    return [[[sum(h[i][j] for h in heads) / len(heads) for j in range(L)] for i in range(L)]]


def hand_att_mse(student, teacher, layer_map=LAYER_MAP, lengths=LENGTHS):
    """sum over pairs of [sum over real (b,i,j) and heads of (A_S - A_T)^2] / [sum_b n_b^2 * H]; heads averaged first
    when the counts differ."""
    total = 0.0
    for s, t in layer_map:
        a_s, a_t = student.attentions[s - 1]["scores"].tolist(), teacher.attentions[t - 1]["scores"].tolist()
        average = len(a_s[0]) != len(a_t[0])
        se, count = 0.0, 0
        for b, n in enumerate(lengths):
            for ms, mt in zip(_head_maps(a_s, b, average), _head_maps(a_t, b, average)):
                for i in range(n):
                    for j in range(n):
                        se += (ms[i][j] - mt[i][j]) ** 2
                        count += 1
        total += se / count
    return total


def hand_att_kl(student, teacher, layer_map=LAYER_MAP, lengths=LENGTHS):
    """sum over pairs of mean over real queries and heads of KL(a_T || a_S), a = softmax over the real keys; the
    probabilities averaged over heads first when the counts differ."""
    total = 0.0
    for s, t in layer_map:
        x_s, x_t = student.attentions[s - 1]["scores"].tolist(), teacher.attentions[t - 1]["scores"].tolist()
        hs, ht = len(x_s[0]), len(x_t[0])
        kl, rows = 0.0, 0
        for b, n in enumerate(lengths):
            for i in range(n):
                if hs == ht:
                    for h in range(hs):
                        kl += _kl(_softmax_real(x_t[b][h][i], n), _softmax_real(x_s[b][h][i], n))
                        rows += 1
                else:
                    p_t = [sum(_softmax_real(x_t[b][h][i], n)[j] for h in range(ht)) / ht for j in range(n)]
                    p_s = [sum(_softmax_real(x_s[b][h][i], n)[j] for h in range(hs)) / hs for j in range(n)]
                    kl += _kl(p_t, p_s)
                    rows += 1
        total += kl / rows
    return total


def _relations(v, b, n, r_heads):
    """MiniLM(v2) value relation logits of example b: concatenate the heads' values of each token, split into r_heads
    relation heads, <v_i, v_j> / sqrt(d_r) -> [R][n][n]."""
    concat = [sum((v[b][h][i] for h in range(len(v[b]))), []) for i in range(n)]
    d_r = len(concat[0]) // r_heads
    return [[[sum(concat[i][r * d_r + c] * concat[j][r * d_r + c] for c in range(d_r)) / math.sqrt(d_r) for j in range(n)]
             for i in range(n)] for r in range(r_heads)]


def hand_val_kl(student, teacher, layer_map=LAYER_MAP, lengths=LENGTHS):
    """sum over pairs of mean over real queries and R = H_t relation heads of KL(VR_T || VR_S)."""
    total = 0.0
    for s, t in layer_map:
        v_s, v_t = student.attentions[s - 1]["v"].tolist(), teacher.attentions[t - 1]["v"].tolist()
        r_heads = len(v_t[0])
        kl, rows = 0.0, 0
        for b, n in enumerate(lengths):
            rel_s, rel_t = _relations(v_s, b, n, r_heads), _relations(v_t, b, n, r_heads)
            for r in range(r_heads):
                for i in range(n):
                    kl += _kl(_softmax_real(rel_t[r][i], n), _softmax_real(rel_s[r][i], n))
                    rows += 1
        total += kl / rows
    return total


HAND = {"att-mse": hand_att_mse, "att-kl": hand_att_kl, "val-kl": hand_val_kl}


def _hand_prediction(zs, zt, y, t, alpha):
    """CE(z_S, y) + alpha * T^2 * KL(softmax(z_T/T) || softmax(z_S/T)), batch means, plain Python."""
    n, ce, kl = len(zs), 0.0, 0.0
    for s_row, t_row, label in zip(zs, zt, y):
        ce += -math.log(_softmax_real(s_row, len(s_row))[label]) / n
        kl += _kl(_softmax_real([v / t for v in t_row], len(t_row)), _softmax_real([v / t for v in s_row], len(s_row))) / n
    return ce + alpha * t * t * kl


# --------------------------------------------------------------------------- 1. values


def test_registered_with_contract():
    for name in NAMES:
        cls = get_objective(name)
        assert cls.needs == Needs(logits=True, attentions=True, token_aligned=True)
        assert cls.version == "1.0" and cls.paper


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hs,ht,ds,dt", [(2, 2, 4, 4), (2, 4, 4, 3)], ids=["same-heads", "2-vs-4-heads"])
def test_matches_hand_formula(name, hs, ht, ds, dt):
    student, teacher = _pair(hs, ht, ds, dt)
    obj = _objective(name, student_heads=hs, teacher_heads=ht, student_hidden=hs * ds, teacher_hidden=ht * dt)
    value = obj.intermediate(student, teacher, BATCH)
    expected = HAND[name](student, teacher)
    assert expected > 1e-3  # a meaningful, non-degenerate reference
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_head_mismatch_averages_rather_than_pairs_heads():
    """2 vs 4 heads: the value is the head-averaged comparison, not the per-head one of the first 2 teacher heads."""
    student, teacher = _pair(2, 4)
    for name in ("att-mse", "att-kl"):
        value = _objective(name, teacher_heads=4).intermediate(student, teacher, BATCH).item()
        first_two = Outputs(teacher.logits, None, [{k: v[:, :2] for k, v in layer.items()} for layer in teacher.attentions])
        assert value != pytest.approx(HAND[name](student, first_two), rel=1e-3)


def test_layer_pairs_are_one_based_and_summed():
    student, teacher = _pair()
    single = [_objective("att-mse", layer_map=[p]).intermediate(student, teacher, BATCH).item() for p in LAYER_MAP]
    assert single[0] == pytest.approx(hand_att_mse(student, teacher, [(1, 2)]), rel=1e-5)
    both = _objective("att-mse").intermediate(student, teacher, BATCH).item()
    assert both == pytest.approx(sum(single), rel=1e-6)


# --------------------------------------------------------------------------- 2. padding


def _perturb_padding(outputs: Outputs, value: float | None = None) -> Outputs:
    """Every padded query row and key column of scores/probs, and padded tokens of q/k/v, overwritten: with
    ``value`` (inf / nan) or with large random numbers."""
    g = torch.Generator().manual_seed(7)
    pad_tok = ~_mask().bool()  # [B, L]
    layers = []
    for layer in outputs.attentions:
        new = {}
        for k, x in layer.items():
            x = x.detach().clone()
            if x.shape[-1] == L and k in ("scores", "probs"):
                where = pad_tok[:, None, :, None] | pad_tok[:, None, None, :]
            else:
                where = pad_tok[:, None, :, None]
            where = where.expand_as(x)
            noise = torch.full_like(x, value) if value is not None else 50 * torch.randn(x.shape, generator=g)
            new[k] = torch.where(where, noise, x)
        layers.append(new)
    return Outputs(outputs.logits, None, layers)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hs,ht", [(2, 2), (2, 4)])
def test_padded_positions_change_nothing(name, hs, ht):
    student, teacher = _pair(hs, ht, 4, 3 if ht == 4 else 4)
    obj = _objective(name, student_heads=hs, teacher_heads=ht)
    base = obj.intermediate(student, teacher, BATCH).item()
    for fill in (None, math.inf, math.nan):
        s2, t2 = _perturb_padding(student, fill), _perturb_padding(teacher, fill)
        assert obj.intermediate(s2, t2, BATCH).item() == pytest.approx(base, rel=1e-6)
    # the control: the same change at one real position does change the loss
    s3 = Outputs(student.logits, None, [{k: v.clone() for k, v in layer.items()} for layer in student.attentions])
    s3.attentions[0]["scores"][1, 0, 2, 3] += 3.0
    s3.attentions[0]["v"][1, 0, 2] += 3.0
    assert obj.intermediate(s3, teacher, BATCH).item() != pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_nan_at_padded_positions_gives_finite_gradients(name):
    student, teacher = _pair()
    s2 = _perturb_padding(student, math.nan)
    for layer in s2.attentions:
        for x in layer.values():
            x.requires_grad_(True)
    _objective(name).intermediate(s2, _perturb_padding(teacher, math.nan), BATCH).backward()
    key = "v" if name == "val-kl" else "scores"
    for layer in s2.attentions:
        assert torch.isfinite(layer[key].grad).all()


# --------------------------------------------------------------------------- 3. gradients


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hs,ht", [(2, 2), (2, 4)])
def test_gradients_reach_student_only(name, hs, ht):
    student, teacher = _pair(hs, ht, 4, 3 if ht == 4 else 4, grad=True)
    # the shared prediction term (Objective.soft_loss) does not detach the teacher's logits; the harness computes
    # them under no_grad, so here too they are plain tensors. Every teacher attention tensor is a grad-requiring leaf.
    teacher.logits.requires_grad_(False)
    obj = _objective(name, student_heads=hs, teacher_heads=ht)
    assert list(obj.parameters()) == []
    obj(student, teacher, BATCH, Stage("distil")).loss.backward()
    key = "v" if name == "val-kl" else "scores"
    pad = ~_mask().bool()
    for layer in student.attentions:  # both student layers are mapped
        grad = layer[key].grad
        assert grad is not None and grad.abs().sum() > 0
        padded = (pad[:, None, :, None] | pad[:, None, None, :]) if key == "scores" else pad[:, None, :, None]
        assert grad[padded.expand_as(grad)].abs().max() == 0  # padded positions get exactly nothing
    assert student.logits.grad is not None and student.logits.grad.abs().sum() > 0
    for layer in teacher.attentions:
        assert all(x.grad is None for x in layer.values())


# --------------------------------------------------------------------------- 4. the full loss


@pytest.mark.parametrize("name", NAMES)
def test_full_forward_is_ce_plus_kd_plus_beta_intermediate(name):
    student, teacher = _pair()
    obj = _objective(name, beta=0.7, alpha_kd=0.3, temperature=2.0)
    out = obj(student, teacher, BATCH, Stage("distil"))
    inter = HAND[name](student, teacher)
    pred = _hand_prediction(student.logits.tolist(), teacher.logits.tolist(), BATCH["labels"].tolist(), 2.0, 0.3)
    assert out.loss.item() == pytest.approx(pred + 0.7 * inter, rel=1e-5)
    assert out.terms[name].item() == pytest.approx(inter, rel=1e-5)
    assert set(out.terms) == {name, "ce", "kd"}


def test_combination_with_attention_parts():
    student, teacher = _pair()
    combo = get_objective("att-kl+0.5*val-kl")(Context(get_task("rte"), RunConfig(beta=2.0), LAYER_MAP, 8, 8, 1, 2, 2))
    out = combo(student, teacher, BATCH, Stage("intermediate"))
    expected = hand_att_kl(student, teacher) + 0.5 * hand_val_kl(student, teacher)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- 5. identical maps


@pytest.mark.parametrize("name", NAMES)
def test_identical_maps_give_zero(name):
    student, _ = _pair()
    teacher = Outputs(student.logits, None, [student.attentions[0]] + student.attentions)  # teacher layers 2, 3 = student 1, 2
    assert abs(_objective(name).intermediate(student, teacher, BATCH).item()) < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_same_information_in_more_teacher_heads_gives_zero(name):
    """4 teacher heads holding the student's 2 heads twice (att-*: equal head averages) or the student's values
    re-split into 4 heads (val-kl: equal relation heads) -> 0."""
    student, _ = _pair(2, 2, 4, 4)
    layers = []
    for layer in student.attentions:
        v = layer["v"]
        layers.append({"scores": layer["scores"].repeat(1, 2, 1, 1), "probs": layer["probs"].repeat(1, 2, 1, 1),
                       "v": v.transpose(1, 2).reshape(B, L, 4, 2).transpose(1, 2)})
    teacher = Outputs(student.logits, None, [layers[0]] + layers)
    assert abs(_objective(name, teacher_heads=4).intermediate(student, teacher, BATCH).item()) < 1e-6


# --------------------------------------------------------------------------- errors


def test_val_kl_refuses_student_not_divisible_into_relation_heads():
    with pytest.raises(UsageError, match="divisible by 4"):
        _objective("val-kl", student_heads=2, teacher_heads=4, student_hidden=6, teacher_hidden=12)
    student, teacher = _pair(2, 4, 3, 3)  # 2 x 3 = 6 student value dims, 4 relation heads
    with pytest.raises(UsageError, match="cannot be split into 4 relation heads"):
        _objective("val-kl", student_heads=None, teacher_heads=None).intermediate(student, teacher, BATCH)


@pytest.mark.parametrize("name", NAMES)
def test_misaligned_sequences_are_refused(name):
    student, teacher = _pair()
    short = Outputs(teacher.logits, None, [{k: v[:, :, :5, :5] if k in ("scores", "probs") else v[:, :, :5]
                                           for k, v in layer.items()} for layer in teacher.attentions])
    with pytest.raises(UsageError, match="share a tokenizer"):
        _objective(name).intermediate(student, short, BATCH)

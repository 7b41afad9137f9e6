"""Hidden-state objectives (hid-cls, hid-seq, hid-cls-contrast, lwd), each recomputed by hand from its paper's formula.

Every reference below is written with explicit loops over examples, tokens and dimensions (plain Python arithmetic
on tensor elements), never by calling the implementation; it reads only the objective's own projection weights.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distilbench.config import RunConfig
from distilbench.objectives import Context, Needs, Outputs, Stage, get_objective
from distilbench.results.store import ResultsStore
from distilbench.data.tasks import get_task

B, L, DS, DT = 3, 6, 8, 12
PAIRS = [(1, 2), (2, 4)]  # (student layer, teacher layer), 1-based: hidden_states[0] is the embeddings
MASK = torch.tensor([[1, 1, 1, 1, 1, 1],
                     [1, 1, 1, 1, 0, 0],   # rows 1 and 2 are padded
                     [1, 1, 1, 0, 0, 0]])
LABELS = torch.tensor([0, 1, 1])
NAMES = ["hid-cls", "hid-seq", "hid-cls-contrast", "lwd"]
CLS_ONLY = {"hid-cls", "hid-cls-contrast"}
TAU = 0.07


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _ctx(ds=DS, dt=DT, **cfg):
    return Context(get_task("rte"), RunConfig(**cfg), PAIRS, student_hidden=ds, teacher_hidden=dt)


def _objective(name, ds=DS, dt=DT, **cfg):
    torch.manual_seed(1)  # the random initialisation of the projections
    obj = get_objective(name)(_ctx(ds, dt, **cfg))
    with torch.no_grad():  # a non-trivial projection everywhere one is learnable (identity-initialised ones included)
        for w in obj.parameters():
            w.add_(0.3 * torch.randn_like(w))
    return obj.eval()  # eval: hid-cls-contrast's bank (off by default anyway) is never written


def _outputs(ds=DS, dt=DT, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    s = Outputs(torch.randn(B, 2, generator=g, requires_grad=grad),
                tuple(torch.randn(B, L, ds, generator=g, requires_grad=grad) for _ in range(3)))
    # teacher logits never require grad here: Objective.soft_loss (base.py) does not detach them, so they would get a
    # gradient through the KD term; the harness runs the teacher under no_grad, where this cannot happen
    t = Outputs(torch.randn(B, 2, generator=g),
                tuple(torch.randn(B, L, dt, generator=g, requires_grad=grad) for _ in range(5)))
    return s, t


def _batch(idx=(10, 11, 12)):
    return {"attention_mask": MASK.clone(), "labels": LABELS.clone(), "idx": torch.tensor(idx)}


# -- references, by hand ------------------------------------------------------------------------------------------
def _matrix(obj, k, ds, dt):
    """Pair k's W as a [d_t, d_s] matrix (h W in the papers' row-vector notation is W @ h here)."""
    w = obj.proj[k]
    if isinstance(w, nn.Identity):
        assert ds == dt
        return torch.eye(ds)
    return w.weight.detach()


def _project(w, h):
    return [sum(float(w[j, c]) * float(h[c]) for c in range(len(h))) for j in range(w.shape[0])]


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def ref_hid_cls(obj, s, t, mask, ds=DS, dt=DT):
    """sum_pairs 1/(B d_t) sum_b sum_j ((W h_S[b,0])_j - h_T[b,0]_j)^2"""
    total = 0.0
    for k, (ls, lt) in enumerate(PAIRS):
        w = _matrix(obj, k, ds, dt)
        acc = 0.0
        for b in range(B):
            p = _project(w, s.hidden_states[ls][b, 0])
            acc += sum((p[j] - float(t.hidden_states[lt][b, 0, j])) ** 2 for j in range(dt))
        total += acc / (B * dt)
    return total


def ref_hid_seq(obj, s, t, mask, ds=DS, dt=DT, project=True):
    """sum_pairs 1/N sum_{(b,i) real} 1/d_t sum_j ((W h_S[b,i])_j - h_T[b,i]_j)^2, N = number of real tokens"""
    total = 0.0
    for k, (ls, lt) in enumerate(PAIRS):
        w = _matrix(obj, k, ds, dt) if project else torch.eye(ds)
        acc, n = 0.0, 0
        for b in range(B):
            for i in range(L):
                if mask[b, i] == 0:
                    continue
                p = _project(w, s.hidden_states[ls][b, i])
                acc += sum((p[j] - float(t.hidden_states[lt][b, i, j])) ** 2 for j in range(dt)) / dt
                n += 1
        total += acc / n
    return total


def ref_contrast(obj, s, t, mask, ds=DS, dt=DT, bank=None, bank_idx=None, idx=None):
    """sum_pairs 1/B sum_i -log( e^{z_i.k_i/tau} / (sum_j e^{z_i.k_j/tau} + sum_{q in bank, idx(q) != idx(i)} e^{z_i.q/tau}) ),
    z_i = unit(W h_S[i,0]), k_j = unit(h_T[j,0]); bank[k] is a list of (already unit) teacher vectors for pair k."""
    total = 0.0
    for k, (ls, lt) in enumerate(PAIRS):
        w = _matrix(obj, k, ds, dt)
        z = [_unit(_project(w, s.hidden_states[ls][i, 0])) for i in range(B)]
        keys = [_unit([float(x) for x in t.hidden_states[lt][j, 0]]) for j in range(B)]
        acc = 0.0
        for i in range(B):
            denom = sum(math.exp(_dot(z[i], keys[j]) / TAU) for j in range(B))
            for q, q_idx in zip(bank[k] if bank else [], bank_idx or []):
                if idx is None or q_idx != idx[i]:
                    denom += math.exp(_dot(z[i], q) / TAU)
            acc += -(_dot(z[i], keys[i]) / TAU - math.log(denom))
        total += acc / B
    return total


REFS = {"hid-cls": ref_hid_cls, "hid-seq": ref_hid_seq, "hid-cls-contrast": ref_contrast, "lwd": ref_hid_seq}


def _hand_prediction(s, t, cfg):
    """CE + alpha_kd * T^2 * KL(p_T || p_S), by hand."""
    ce = kl = 0.0
    temp = cfg["temperature"]
    for zs, zt, y in zip(s.logits.tolist(), t.logits.tolist(), LABELS.tolist()):
        ce += -(zs[y] - math.log(sum(math.exp(v) for v in zs))) / B
        ps = [math.exp(v / temp) for v in zs]
        pt = [math.exp(v / temp) for v in zt]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps)) / B
    return ce + cfg["alpha_kd"] * temp * temp * kl


# -- 1. value = independent recomputation ---------------------------------------------------------------------------
@pytest.mark.parametrize("ds,dt", [(DS, DT), (DS, DS)])
@pytest.mark.parametrize("name", NAMES)
def test_intermediate_matches_hand_formula(name, ds, dt):
    obj = _objective(name, ds, dt)
    s, t = _outputs(ds, dt)
    got = obj.intermediate(s, t, _batch()).item()
    assert got == pytest.approx(REFS[name](obj, s, t, MASK, ds, dt), rel=1e-5)


def test_registration_and_needs():
    expect = {"hid-cls": False, "hid-seq": True, "hid-cls-contrast": False, "lwd": True}
    for name, aligned in expect.items():
        cls = get_objective(name)
        assert cls.name == name and cls.version == "1.0" and cls.paper
        assert cls.needs == Needs(logits=True, hidden_states=True, token_aligned=aligned)
    assert get_objective("hid-cls-contrast").tau == TAU and get_objective("hid-cls-contrast").memory_size == 0


# -- 2. padding (and, for [CLS] objectives, every position but 0) changes nothing -------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_ignored_positions_change_nothing(name):
    obj = _objective(name)
    s, t = _outputs()
    batch = _batch()
    base = obj.intermediate(s, t, batch).item()
    ignored = torch.ones(B, L, dtype=torch.bool)
    ignored[:, 0] = False
    if name not in CLS_ONLY:
        ignored = MASK == 0
    g = torch.Generator().manual_seed(7)

    def perturbed(where):
        def change(h):
            h = h.clone()
            h[where] = 1e3 * torch.randn(h[where].shape, generator=g)
            return h
        return (Outputs(s.logits, tuple(change(h) for h in s.hidden_states)),
                Outputs(t.logits, tuple(change(h) for h in t.hidden_states)))

    assert obj.intermediate(*perturbed(ignored), batch).item() == pytest.approx(base, rel=1e-6, abs=1e-6)
    nan_filled = Outputs(s.logits, tuple(h.masked_fill(ignored[..., None], float("nan")) for h in s.hidden_states))
    assert obj.intermediate(nan_filled, t, batch).item() == pytest.approx(base, rel=1e-6, abs=1e-6)
    # the check can fail: a position that is read does change the loss
    read = torch.zeros(B, L, dtype=torch.bool)
    read[1, 0 if name in CLS_ONLY else 3] = True
    assert abs(obj.intermediate(*perturbed(read), batch).item() - base) > 1e-3


# -- 3. gradients reach the student and the projections, never the teacher ---------------------------------------------
@pytest.mark.parametrize("ds,dt", [(DS, DT), (DS, DS)])
@pytest.mark.parametrize("name", NAMES)
def test_gradients_student_and_projections_only(name, ds, dt):
    obj = _objective(name, ds, dt).train()
    s, t = _outputs(ds, dt, grad=True)
    obj(s, t, _batch(), Stage("distil")).loss.backward()
    for ls, lt in PAIRS:
        assert s.hidden_states[ls].grad is not None and s.hidden_states[ls].grad.abs().sum() > 0
        assert t.hidden_states[lt].grad is None or not t.hidden_states[lt].grad.any()
    assert s.hidden_states[0].grad is None  # the embeddings are in no pair
    assert all(h.grad is None or not h.grad.any() for h in t.hidden_states)
    assert s.logits.grad.abs().sum() > 0
    if name not in CLS_ONLY:  # padded positions get exactly zero gradient
        for ls, _ in PAIRS:
            assert not s.hidden_states[ls].grad[MASK == 0].any()
    else:  # only [CLS] is read
        for ls, _ in PAIRS:
            assert not s.hidden_states[ls].grad[:, 1:].any()
    learnable = ds != dt or name in ("hid-cls-contrast", "lwd")
    params = list(obj.parameters())
    assert len(params) == (len(PAIRS) if learnable else 0)
    assert [id(p) for p in params] == [id(m.weight) for m in obj.proj if isinstance(m, nn.Linear)]
    for p in params:
        assert p.shape == (dt, ds) and p.grad is not None and p.grad.abs().sum() > 0
    if name == "hid-cls-contrast":
        assert not obj.bank.requires_grad and list(obj.buffers()) and "bank" not in obj.state_dict()


# -- 4. the frame: joint = CE + alpha_kd T^2 KL + beta I; stages ------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_stage_losses(name):
    cfg = {"beta": 0.3, "alpha_kd": 0.7, "temperature": 2.5}
    obj = _objective(name, **cfg)
    s, t = _outputs()
    batch = _batch()
    inter = REFS[name](obj, s, t, MASK)
    pred = _hand_prediction(s, t, cfg)
    out = obj(s, t, batch, Stage("distil"))
    assert out.loss.item() == pytest.approx(pred + 0.3 * inter, rel=1e-5)
    assert out.terms[name].item() == pytest.approx(inter, rel=1e-5)
    assert set(out.terms) == {name, "ce", "kd"} and not any(v.requires_grad for v in out.terms.values())
    assert obj(s, t, batch, Stage("intermediate")).loss.item() == pytest.approx(inter, rel=1e-5)
    assert obj(s, t, batch, Stage("prediction")).loss.item() == pytest.approx(pred, rel=1e-5)
    assert [st.name for st in obj.stages()] == ["distil"]
    seq = get_objective(name)(_ctx(schedule="sequential"))
    assert [st.name for st in seq.stages()] == ["intermediate", "prediction"]


# -- 5. LWD: identity-initialised W for equal sizes = plain masked MSE ---------------------------------------------------
def test_lwd_identity_init_is_plain_masked_mse():
    torch.manual_seed(0)
    obj = get_objective("lwd")(_ctx(DS, DS))
    assert len(obj.proj) == len(PAIRS)
    for w in obj.proj:
        assert isinstance(w, nn.Linear) and w.bias is None and w.weight.requires_grad
        assert torch.equal(w.weight, torch.eye(DS))
    s, t = _outputs(DS, DS)
    assert obj.intermediate(s, t, _batch()).item() == pytest.approx(ref_hid_seq(obj, s, t, MASK, DS, DS, project=False), rel=1e-6)
    assert get_objective("hid-seq")(_ctx(DS, DS)).intermediate(s, t, _batch()).item() == pytest.approx(
        obj.intermediate(s, t, _batch()).item(), rel=1e-6)
    # different sizes: the paper's random init (no identity exists), so not a copy of a fixed matrix
    other = get_objective("lwd")(_ctx(DS, DT))
    assert all(w.weight.shape == (DT, DS) and w.weight.std() > 0 for w in other.proj)


# -- 6. hid-cls-contrast: aligned beats shuffled; the memory bank -----------------------------------------------------
def _identity_contrast(**kw):
    obj = get_objective("hid-cls-contrast")(_ctx(DS, DS), **kw)
    with torch.no_grad():
        for w in obj.proj:
            w.weight.copy_(torch.eye(DS))
    return obj


def test_contrast_aligned_student_beats_shuffled():
    obj = _identity_contrast().eval()
    _, t = _outputs(DS, DS)

    def student_from(order):
        hs = [torch.randn(B, L, DS) for _ in range(3)]
        for ls, lt in PAIRS:
            hs[ls][:, 0] = 2.0 * t.hidden_states[lt][order, 0]  # a positive scale: the same direction
        return Outputs(torch.zeros(B, 2), tuple(hs))

    aligned = obj.intermediate(student_from([0, 1, 2]), t, _batch()).item()
    shuffled = obj.intermediate(student_from([1, 2, 0]), t, _batch()).item()
    assert aligned < len(PAIRS) * math.log(B) < shuffled  # better than chance when aligned, worse when shuffled
    assert aligned == pytest.approx(ref_contrast(obj, student_from([0, 1, 2]), t, MASK, DS, DS), rel=1e-5, abs=1e-6)


def test_contrast_memory_bank():
    obj = _identity_contrast(memory_size=4).train()
    assert obj.bank.shape == (len(PAIRS), 4, DS) and obj.bank_filled == 0 and obj.bank_ptr == 0
    batches = [_outputs(DS, DS, seed=k) for k in range(3)]
    unit = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]  # noqa: E731
    cls = lambda t, lt, j: unit([float(x) for x in t.hidden_states[lt][j, 0]])  # noqa: E731

    # step 1: empty bank -> in-batch only; then 3 vectors per pair are written
    s, t = batches[0]
    assert obj.intermediate(s, t, _batch((0, 1, 2))).item() == pytest.approx(ref_contrast(obj, s, t, MASK, DS, DS), rel=1e-5)
    assert (obj.bank_filled, obj.bank_ptr) == (3, 3) and obj.bank_idx.tolist() == [0, 1, 2, -1]

    # step 2: the 3 banked vectors are extra negatives, so the loss exceeds the in-batch loss
    s, t2 = batches[1]
    bank = [[cls(t, lt, j) for j in range(3)] for _, lt in PAIRS]
    with_bank = obj.intermediate(s, t2, _batch((3, 4, 5))).item()
    assert with_bank == pytest.approx(ref_contrast(obj, s, t2, MASK, DS, DS, bank, [0, 1, 2], [3, 4, 5]), rel=1e-5)
    assert with_bank > ref_contrast(obj, s, t2, MASK, DS, DS) + 1e-4
    # FIFO: slots (3 + [0, 1, 2]) % 4 = 3, 0, 1 take batch 2; slot 2 keeps batch 1's last example
    assert (obj.bank_filled, obj.bank_ptr) == (4, 2) and obj.bank_idx.tolist() == [4, 5, 2, 3]
    for k, (_, lt) in enumerate(PAIRS):
        for slot, (src, j) in enumerate([(t2, 1), (t2, 2), (t, 2), (t2, 0)]):
            assert obj.bank[k, slot].tolist() == pytest.approx(cls(src, lt, j), abs=1e-6)
    assert not obj.bank.requires_grad

    # step 3: example 2 comes back (a later epoch): its own banked vector is no negative for it, but is for the others
    s, t3 = batches[2]
    t3 = Outputs(t3.logits, tuple(h.clone() for h in t3.hidden_states))
    for _, lt in PAIRS:
        t3.hidden_states[lt][0, 0] = t.hidden_states[lt][2, 0]
    bank = [[cls(t2, lt, 1), cls(t2, lt, 2), cls(t, lt, 2), cls(t2, lt, 0)] for _, lt in PAIRS]
    got = obj.intermediate(s, t3, _batch((2, 6, 7))).item()
    assert got == pytest.approx(ref_contrast(obj, s, t3, MASK, DS, DS, bank, [4, 5, 2, 3], [2, 6, 7]), rel=1e-5)
    no_exclusion = ref_contrast(obj, s, t3, MASK, DS, DS, bank, [4, 5, 2, 3], None)
    assert got < no_exclusion - 1e-4
    assert (obj.bank_filled, obj.bank_ptr) == (4, 1)

    # eval mode neither reads nor writes the bank
    obj.eval()
    before = (obj.bank.clone(), obj.bank_idx.clone(), obj.bank_ptr, obj.bank_filled)
    assert obj.intermediate(s, t, _batch()).item() == pytest.approx(ref_contrast(obj, s, t, MASK, DS, DS), rel=1e-5)
    assert torch.equal(obj.bank, before[0]) and torch.equal(obj.bank_idx, before[1])
    assert (obj.bank_ptr, obj.bank_filled) == before[2:]


def test_contrast_bank_smaller_than_batch_keeps_last_examples():
    obj = _identity_contrast(memory_size=2).train()
    s, t = _outputs(DS, DS)
    obj.intermediate(s, t, _batch((0, 1, 2)))
    assert (obj.bank_filled, obj.bank_ptr) == (2, 0) and obj.bank_idx.tolist() == [1, 2]
    for k, (_, lt) in enumerate(PAIRS):
        expect = torch.nn.functional.normalize(t.hidden_states[lt][1:, 0], dim=-1)
        assert torch.allclose(obj.bank[k], expect, atol=1e-6)
    with pytest.raises(ValueError, match="memory_size"):
        get_objective("hid-cls-contrast")(_ctx(), memory_size=-1)


# -- 7. end to end through the CLI on the tiny model --------------------------------------------------------------------
def _run(args, name, extra=()):
    from distilbench.cli import main

    assert main(["run", "--objective", name, "--seeds", "1", "--no-baseline", "--init", "layers:1,3", *extra, *args]) == 0
    results = args[args.index("--results") + 1]
    rows = ResultsStore(results).rows(objective=name)
    assert len(rows) == 1 and 0.0 <= rows[0]["score"] <= 1.0
    return rows[0]


@pytest.mark.parametrize("name", NAMES)
def test_cli_run(name, tiny_run_args):
    row = _run(tiny_run_args, name)
    history = row["extra"]["history"]
    assert [h["stage"] for h in history] == ["distil"]
    assert math.isfinite(history[0][name]) and history[0][name] > 0 and "ce" in history[0] and "kd" in history[0]


def test_cli_sequential_schedule(tiny_run_args):
    row = _run(tiny_run_args, "hid-seq", ["--schedule", "sequential"])
    history = row["extra"]["history"]
    assert [h["stage"] for h in history] == ["intermediate", "prediction"]
    assert "hid-seq" in history[0] and "ce" not in history[0]
    assert "ce" in history[1] and "hid-seq" not in history[1]
    assert row["params"]["objective_params"]["schedule"] == "sequential"


# -- mixed precision (the GPU path, exercised with CPU bf16 autocast) ---------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_matches_float32(name):
    obj = _objective(name)
    s, t = _outputs()
    want = obj.intermediate(s, t, _batch()).item()
    s16 = Outputs(s.logits.bfloat16(), tuple(h.bfloat16() for h in s.hidden_states))
    t16 = Outputs(t.logits.bfloat16(), tuple(h.bfloat16() for h in t.hidden_states))
    if name == "hid-cls-contrast":  # with the bank on: the second call reads what the first wrote
        obj = get_objective(name)(_ctx(), memory_size=4).train()
        obj.load_state_dict(_objective(name).state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = obj(s16, t16, _batch(), Stage("distil"))
        second = obj(s16, t16, _batch((3, 4, 5)), Stage("distil"))
    for out in (first, second):
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert first.terms[name].item() == pytest.approx(want, rel=0.03)
    if name == "hid-cls-contrast":
        assert obj.bank.dtype == torch.float32 and (obj.bank_filled, obj.bank_ptr) == (4, 2)
        assert second.terms[name].item() > first.terms[name].item()  # the banked negatives count

"""KD and the no-teacher baseline, recomputed by hand from Hinton et al.'s formula."""
from __future__ import annotations

import math

import pytest
import torch

from distilbench.config import RunConfig
from distilbench.training.loop.harness import TeacherSource, model_outputs
from distilbench.objectives import Context, Needs, Outputs, Stage, get_objective
from distilbench.data.tasks import get_task


def _objective(name, task="rte", **cfg):
    return get_objective(name)(Context(get_task(task), RunConfig(**cfg), [1, 2], 32, 32))


def _hand_kd(zs, zt, y, t, alpha):
    """CE(z_S, y) + alpha * T^2 * KL(p_T || p_S) at temperature T, written with plain Python sums."""
    n = len(zs)
    ce = kl = 0.0
    for s_row, t_row, label in zip(zs, zt, y):
        log_z = math.log(sum(math.exp(v) for v in s_row))
        ce += -(s_row[label] - log_z) / n
        ps = [math.exp(v / t) for v in s_row]
        pt = [math.exp(v / t) for v in t_row]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps)) / n
    return ce + alpha * t * t * kl, ce, kl


@pytest.mark.parametrize("t,alpha", [(1.0, 1.0), (2.0, 0.5), (4.0, 1.0)])
def test_kd_loss_matches_hand_computation(t, alpha):
    zs = [[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]]
    zt = [[1.5, -0.5], [0.2, 0.9], [-2.0, 1.0]]
    y = [0, 1, 1]
    out = _objective("kd", temperature=t, alpha_kd=alpha)(
        Outputs(torch.tensor(zs)), Outputs(torch.tensor(zt)), {"labels": torch.tensor(y)}, Stage("distil"))
    total, ce, kl = _hand_kd(zs, zt, y, t, alpha)
    assert out.loss.item() == pytest.approx(total, rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out.terms["kd"].item() == pytest.approx(kl, rel=1e-5)


def test_kd_temperature_squared_factor():
    """Doubling T with the same soft distributions must multiply the weighted soft term by 4 (the T^2 factor)."""
    zs, zt, y = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), {"labels": torch.tensor([1])}
    a = _objective("kd", temperature=1.0)(Outputs(zs), Outputs(zt), y, Stage("d"))
    b = _objective("kd", temperature=2.0)(Outputs(2 * zs), Outputs(2 * zt), y, Stage("d"))
    assert (b.loss - b.terms["ce"]).item() == pytest.approx(4 * (a.loss - a.terms["ce"]).item(), rel=1e-5)


def test_kd_regression_is_mse_on_outputs():
    zs, zt, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [2.5]]), torch.tensor([1.5, 4.0])
    out = _objective("kd", task="stsb", alpha_kd=0.5)(Outputs(zs), Outputs(zt), {"labels": y}, Stage("d"))
    mse_y = ((1.0 - 1.5) ** 2 + (3.0 - 4.0) ** 2) / 2
    mse_t = ((1.0 - 2.0) ** 2 + (3.0 - 2.5) ** 2) / 2
    assert out.loss.item() == pytest.approx(mse_y + 0.5 * mse_t)


def test_none_is_plain_cross_entropy():
    zs, y = [[0.3, -1.2], [2.0, 0.5]], [1, 0]
    out = _objective("none")(Outputs(torch.tensor(zs)), None, {"labels": torch.tensor(y)}, Stage("d"))
    _, ce, _ = _hand_kd(zs, zs, y, 1.0, 0.0)
    assert out.loss.item() == pytest.approx(ce, rel=1e-6)


def _tiny_pair():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg), BertForSequenceClassification(cfg)


def _padded_batch():
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    mask = (ids != 0).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([1, 0]), "idx": torch.tensor([0, 1])}


def test_kd_gradients_reach_student_only():
    student, teacher_net = _tiny_pair()
    teacher = TeacherSource([teacher_net], Needs())
    objective = _objective("kd")
    student.train()
    batch = _padded_batch()
    out = objective(model_outputs(student, batch, objective.needs), teacher(batch), batch, Stage("d"))
    out.loss.backward()
    assert all(p.grad is None for p in teacher_net.parameters())
    # every student tensor on the path from inputs to logits learns (the word embedding rows of unused ids get zeros)
    missing = [n for n, p in student.named_parameters() if p.grad is None]
    assert missing == []
    assert student.classifier.weight.grad.abs().sum() > 0
    assert list(objective.parameters()) == []


def test_padding_does_not_change_kd_loss():
    """The same examples padded to a longer width give the same loss: padded positions are masked out."""
    student, teacher_net = _tiny_pair()
    student.eval()
    teacher = TeacherSource([teacher_net], Needs())
    objective = _objective("kd")
    a = _padded_batch()
    b = {k: v for k, v in a.items()}
    b["input_ids"] = torch.cat([a["input_ids"], torch.zeros(2, 3, dtype=torch.long)], 1)
    b["attention_mask"] = torch.cat([a["attention_mask"], torch.zeros(2, 3, dtype=torch.long)], 1)
    la = objective(model_outputs(student, a, Needs()), teacher(a), a, Stage("d")).loss
    lb = objective(model_outputs(student, b, Needs()), teacher(b), b, Stage("d")).loss
    assert la.item() == pytest.approx(lb.item(), abs=1e-5)


def test_teacher_source_serves_cached_logits_without_running_teacher():
    _, teacher_net = _tiny_pair()

    def boom(*a, **k):
        raise AssertionError("the teacher ran although its logits were cached")

    teacher_net.forward = boom
    table = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    source = TeacherSource([teacher_net], Needs(), [table])
    batch = _padded_batch()
    batch["idx"] = torch.tensor([2, 0])
    assert torch.equal(source(batch).logits, torch.tensor([[5.0, 6.0], [1.0, 2.0]]))

"""A transfer set (``--transfer-examples``): unlabelled in-task examples that only the teacher labels. Objectives that
read a teacher train on them too, their task loss on the labelled examples alone; ``none`` and the selection split
never see them; the rows of teacher-reading objectives name the set in their identity."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distilbench.cli import main
from distilbench.config import RunConfig
from distilbench.data.batching import NO_CLASS, subsample
from distilbench.data.tasks import get_task, load_split
from distilbench.objectives import Context, get_objective
from distilbench.training.runs.plan import plan_run, run_identity
from distilbench.training.runs.runner import Runner


def _loss(task: str):
    return get_objective("none")(Context(get_task(task), RunConfig(task=task), [], 8, None)).task_loss


def test_the_task_loss_leaves_unlabelled_examples_out():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]], requires_grad=True)
    loss = _loss("sst2")(logits, torch.tensor([0, NO_CLASS, 1]))
    assert loss.item() == pytest.approx(F.cross_entropy(logits[[0, 2]], torch.tensor([0, 1])).item())
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0  # nothing reaches the unlabelled row
    none = _loss("sst2")(logits, torch.tensor([NO_CLASS, NO_CLASS, NO_CLASS]))
    assert none.item() == 0.0 and none.requires_grad
    scores = torch.tensor([[1.0], [2.0], [4.0]])
    assert _loss("stsb")(scores, torch.tensor([1.5, float("nan"), 3.0])).item() == pytest.approx((0.25 + 1.0) / 2)
    assert _loss("sst2")(logits, torch.tensor([0, 1, 1])).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([0, 1, 1])).item())  # all labelled: the plain cross-entropy


def _cfg(tiny_teacher, glue_dir, tmp_path, **kw) -> RunConfig:
    base = dict(teacher=str(tiny_teacher), task="rte", data_dir=str(glue_dir), max_train_examples=48,
                results=str(tmp_path / "r.sqlite"), progress=False)
    return RunConfig(**{**base, **kw}).validate()


def test_the_transfer_set_follows_the_labelled_sample_without_its_labels(tiny_teacher, glue_dir, tmp_path):
    plan = plan_run(_cfg(tiny_teacher, glue_dir, tmp_path, transfer_examples=32, objective="kd"), Runner)
    train_file = load_split(get_task("rte"), "train", Path(glue_dir))
    assert len(plan.transfer) == 32 and {e.label for e in plan.transfer} == {NO_CLASS}
    assert not {e.idx for e in plan.transfer} & {e.idx for e in plan.train_all}
    assert {e.idx for e in plan.transfer} | {e.idx for e in plan.train_all} == {e.idx for e in subsample(train_file, 80)}
    kd, none = get_objective("kd"), get_objective("none")
    train_kd, select_kd = plan.training_part(kd, 0)
    train_none, select_none = plan.training_part(none, 0)
    assert select_kd == select_none and train_kd == train_none + plan.transfer  # `none` never sees the set
    assert plan.teacher_read == plan.train_all + plan.transfer
    record = type("R", (), {"key": "k"})()
    assert run_identity(plan, kd, record, 0)["transfer_examples"] == 32
    assert "transfer_examples" not in run_identity(plan, none, record, 0)
    plan.store.close()


@pytest.mark.parametrize("extra, message", [
    (["--transfer-examples", "0"], "--transfer-examples 0: a count of at least 1"),
    (["--transfer-examples", "100000"], "give at most"),
])
def test_bad_transfer_sets_are_refused_with_one_line(tiny_run_args, capfd, monkeypatch, extra, message):
    from test_cli import expect_usage_error

    argv = ["run", *tiny_run_args, "--objective", "kd", *extra]
    line = expect_usage_error(argv, Path(tiny_run_args[tiny_run_args.index("--results") + 1]), capfd, monkeypatch)
    assert message in line


def test_kd_trains_on_the_transfer_set_and_none_does_not(tiny_run_args):
    assert main(["run", *tiny_run_args, "--objective", "kd", "--transfer-examples", "32", "--epochs", "1"]) == 0
    results = Path(tiny_run_args[tiny_run_args.index("--results") + 1])
    conn = sqlite3.connect(results)
    rows = {o: (json.loads(p), json.loads(e)) for o, p, e in conn.execute("SELECT objective, params, extra FROM runs")}
    conn.close()
    (kd_params, kd_extra), (none_params, none_extra) = rows["kd"], rows["none"]
    assert kd_params["transfer_examples"] == 32 and "transfer_examples" not in none_params
    steps = lambda extra: extra["history"][-1]["steps"]
    # 48 labelled minus the selection split (43) in batches of 8: 6 steps; with the 32 transfer examples: 10
    assert (steps(none_extra), steps(kd_extra)) == (6, 10)

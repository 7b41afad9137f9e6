"""The training loop's guards and the teacher cache."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from distilbench.cli import main
from distilbench.config import RunConfig
from distilbench.objectives import OBJECTIVES, LossOutput, Objective
from distilbench.data.tasks import Example, get_task
from distilbench.training.teachers.teacher import ensure_teacher


class _NaNLoss(Objective):
    name, version, paper = "t-nan", "1", "test"

    def forward(self, student, teacher, batch, stage):
        return LossOutput(student.logits.sum() * float("nan"), {})


def test_nan_loss_stops_with_clear_error_and_stores_nothing(tiny_run_args, tmp_path, capsys):
    OBJECTIVES.register("t-nan", _NaNLoss)
    try:
        code = main(["run", "--objective", "t-nan", "--no-baseline", *tiny_run_args])
    finally:
        del OBJECTIVES._entries["t-nan"]
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("distilbench: training diverged: loss became nan at stage distil, epoch 1, step 1")
    from distilbench.results.store import ResultsStore
    assert ResultsStore(tmp_path / "results.sqlite").rows() == []


class _FakeNet:
    def __init__(self, calls):
        self.calls = calls

    def save_pretrained(self, path):
        (Path(path) / "weights.bin").write_text("w")


class _FakeTok:
    def save_pretrained(self, path):
        (Path(path) / "tokenizer.json").write_text("{}")


def _train_fn(calls):
    def fn(model, train_all):
        calls.append(model)
        return _FakeNet(calls), _FakeTok(), {"select_score": 0.5}
    return fn


def test_teacher_is_cached_and_keyed_by_what_determines_it(tiny_teacher):
    task = get_task("rte")
    data = [Example(i, f"s{i}", "t", i % 2) for i in range(20)]
    calls: list = []
    a = ensure_teacher(RunConfig(), str(tiny_teacher), task, data, _train_fn(calls), print)
    b = ensure_teacher(RunConfig(), str(tiny_teacher), task, data, _train_fn(calls), print)
    assert len(calls) == 1 and a.path == b.path and (a.path / "meta.json").exists()
    c = ensure_teacher(RunConfig(teacher_lr=1e-4), str(tiny_teacher), task, data, _train_fn(calls), print)
    d = ensure_teacher(RunConfig(), str(tiny_teacher), task, data[:-1], _train_fn(calls), print)
    e = ensure_teacher(RunConfig(), str(tiny_teacher), get_task("wnli"), data, _train_fn(calls), print)
    assert len(calls) == 4 and len({a.key, c.key, d.key, e.key}) == 4
    assert a.meta["identity"]["lr"] == 3e-5 and c.meta["identity"]["lr"] == 1e-4


def test_concurrent_teacher_requests_train_once(tiny_teacher):
    task = get_task("rte")
    data = [Example(i, f"x{i}", "t", i % 2) for i in range(10)]
    calls: list = []
    threads = [threading.Thread(target=ensure_teacher, args=(RunConfig(teacher_epochs=7), str(tiny_teacher), task, data,
                                                              _train_fn(calls), print)) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1


def test_failed_teacher_training_leaves_no_cache_entry(tiny_teacher):
    task = get_task("rte")
    data = [Example(i, f"y{i}", "t", i % 2) for i in range(10)]

    def broken(model, train_all):
        raise KeyboardInterrupt  # a run killed half-way through teacher fine-tuning

    with pytest.raises(KeyboardInterrupt):
        ensure_teacher(RunConfig(teacher_epochs=9), str(tiny_teacher), task, data, broken, print)
    calls: list = []
    rec = ensure_teacher(RunConfig(teacher_epochs=9), str(tiny_teacher), task, data, _train_fn(calls), print)
    assert len(calls) == 1 and not [p for p in rec.path.parent.iterdir() if p.name.startswith(".tmp")]

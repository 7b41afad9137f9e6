"""The multi-process path, the one several GPUs take: `torchrun` (what `accelerate launch --multi_gpu` runs) with 2 CPU
processes (gloo) trains data-parallel through the same harness and metrics pipeline. (`accelerate launch --cpu
--num_processes 2` starts ONE process unless an MPI hostfile is given: it is no test of this path.)"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from distilbench.cli import main


def _rows(results: Path) -> list[tuple]:
    conn = sqlite3.connect(results)
    rows = conn.execute("SELECT objective, seed, score, metrics, params, extra, run_key FROM runs "
                        "WHERE kind = 'student' ORDER BY objective, seed").fetchall()
    conn.close()
    return rows


def test_two_processes_train_one_row_per_seed_in_a_cell_of_their_own(tiny_run_args, tmp_path, capfd):
    """Each process takes --batch-size examples a step and DDP averages the two (the student's gradients; the
    objective's own modules by hand): a step sees twice the examples and an epoch has half the steps, so the run is
    another computation than one process's, stored under its own key (``processes`` in its identity), one row per
    seed, written once."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun (torch's launcher) is not installed")
    assert main(["teacher", *_teacher_args(tiny_run_args)]) == 0  # under several processes the teacher must exist first
    assert main(["run", *tiny_run_args, "--objective", "hid-seq", "--seeds", "2", "--no-baseline"]) == 0
    results = Path(tiny_run_args[tiny_run_args.index("--results") + 1])
    one = _rows(results)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "distilbench", "run", *tiny_run_args,
            "--objective", "hid-seq", "--seeds", "2"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("mean ± std") == 1  # one summary table: only the main process prints
    two = [r for r in _rows(results) if json.loads(r[4]).get("processes") == 2]
    assert [(o, s) for o, s, *_ in two] == [("hid-seq", 0), ("hid-seq", 1), ("none", 0), ("none", 1)]
    assert [(o, s) for o, s, *_ in one] == [("hid-seq", 0), ("hid-seq", 1)] and len(_rows(results)) == 6
    assert not {r[6] for r in one} & {r[6] for r in two}  # its own cell: never paired with one process's rows
    for _, _, score, metrics, _, extra, _ in two:
        m = json.loads(metrics)
        assert m["score"] == score and 0 <= score <= 1 and "accuracy" in m
    steps = lambda row: json.loads(row[5])["history"][-1]["steps"]  # the stage's steps when its last epoch ended
    assert [steps(r) for r in two[:2]] == [-(-steps(r) // 2) for r in one]  # each process takes every other batch
    # TED's Stage I freezes the student (no DDP module then) and trains the filters, averaged by hand
    argv[argv.index("hid-seq")] = "ted"
    proc = subprocess.run([*argv, "--seed-list", "0", "--no-baseline"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ted = [r for r in _rows(results) if r[0] == "ted"]
    assert len(ted) == 1 and json.loads(ted[0][4])["processes"] == 2
    assert [h["stage"] for h in json.loads(ted[0][5])["history"]] == ["filters", "distil"]


def test_multi_process_run_refuses_a_teacher_that_is_not_trained_yet(tiny_run_args, tmp_path, monkeypatch, capfd):
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    capfd.readouterr()
    assert main(["run", *tiny_run_args, "--objective", "kd", "--teacher-epochs", "2"]) == 2
    err = capfd.readouterr().err
    assert "with several processes, fine-tune it first" in err and len(err.strip().splitlines()) == 1


def _teacher_args(args: list[str]) -> list[str]:
    """The run arguments the `teacher` command accepts (all but the student's --epochs)."""
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == "--epochs":
            skip = True
            continue
        out.append(a)
    return ["--model" if a == "--teacher" else a for a in out]


def test_only_students_are_prepared_for_data_parallel_never_the_frozen_teacher(tiny_run_args, monkeypatch):
    """DDP wraps what ``accelerator.prepare`` is given: the student being trained (and its optimiser), never the frozen
    teacher whose outputs it learns from (TED: its filters' Stage I too). The teacher is prepared only while it is
    itself fine-tuned, by the `teacher` command here."""
    import torch
    from accelerate import Accelerator

    assert main(["teacher", *_teacher_args(tiny_run_args)]) == 0
    prepared = []
    real = Accelerator.prepare

    def spy(self, *args, **kwargs):
        prepared.extend(a for a in args if isinstance(a, torch.nn.Module))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "prepare", spy)
    assert main(["run", *tiny_run_args, "--objective", "ted", "--seeds", "2", "--no-baseline"]) == 0
    layers = [m.config.num_hidden_layers for m in prepared]
    assert len(layers) >= 2 and set(layers) == {3}  # the 3-layer students (teacher layers 1,2,3), never the 4-layer teacher


def test_a_processs_cpu_index_is_a_place_torch_load_knows():
    """Under several CPU processes the device is ``cpu:0``, which torch.load's map_location refuses: the best epoch's
    saved weights are read back to "cpu" (a GPU keeps its index)."""
    import torch

    from distilbench.training.loop.parallel import location

    assert location(torch.device("cpu", 0)) == "cpu" and location(torch.device("cpu")) == "cpu"
    assert location(torch.device("cuda", 1)) == "cuda:1"
    saved = torch.nn.Linear(2, 2).state_dict()
    import io

    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location=location(torch.device("cpu", 0)), weights_only=True)
    assert torch.equal(loaded["weight"], saved["weight"])

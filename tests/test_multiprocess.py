"""The multi-process path: `accelerate launch` with 2 CPU processes (gloo) runs the same harness and metrics pipeline
and stores exactly one result row per (objective, seed) — the path to several GPUs."""
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



def test_accelerate_launch_two_processes_one_row_per_seed(tiny_run_args, tmp_path, capfd):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the `accelerate` launcher is not installed")
    # under several processes the teacher must exist first (one process fine-tunes it)
    assert main(["teacher", *_teacher_args(tiny_run_args)]) == 0
    results = Path(tiny_run_args[tiny_run_args.index("--results") + 1])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "distilbench", "run", *tiny_run_args, "--objective", "hid-seq", "--seeds", "2"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("mean ± std") == 1  # one summary table: only the main process prints
    conn = sqlite3.connect(results)
    rows = conn.execute("SELECT objective, seed, score, metrics, extra FROM runs ORDER BY objective, seed").fetchall()
    conn.close()
    assert [(o, s) for o, s, *_ in rows] == [("hid-seq", 0), ("hid-seq", 1), ("none", 0), ("none", 1)]
    for _, _, score, metrics, extra in rows:
        m = json.loads(metrics)
        assert m["score"] == score and 0 <= score <= 1 and "accuracy" in m
        assert json.loads(extra)["history"]


def test_multi_process_run_refuses_a_teacher_that_is_not_trained_yet(tiny_run_args, tmp_path, monkeypatch, capfd):
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    capfd.readouterr()
    assert main(["run", *tiny_run_args, "--objective", "kd", "--teacher-epochs", "2"]) == 2
    err = capfd.readouterr().err
    assert "under accelerate launch, fine-tune it first" in err and len(err.strip().splitlines()) == 1


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

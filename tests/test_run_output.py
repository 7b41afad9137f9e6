"""What `distilbench run` prints: TED's stages named in its progress lines, the closing time breakdown, the skip line
of a rerun, and long lines (paths, the table's title and settings) kept whole, not wrapped at 80 columns.

Captured output is not a terminal, so progress comes as plain lines (one every 10% of a stage) and rich would wrap
at 80 columns: every path below is longer than that.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from distilbench.cli import main

PHASES = ("teacher", "caches", "Stage I", "students", "total")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def breakdown(out: str) -> dict[str, float]:
    """The seconds of each phase from the closing block, which must be the last lines of stdout."""
    lines = out.rstrip().splitlines()
    assert lines[-len(PHASES) - 1] == "time (s):", out
    found = {}
    for line in lines[-len(PHASES):]:
        m = re.fullmatch(r"  (teacher|caches|Stage I|students|total) +(\d+\.\d)", line)
        assert m, line
        found[m.group(1)] = float(m.group(2))
    assert tuple(found) == PHASES
    return found


def test_ted_run_names_its_stages_and_ends_with_the_time_breakdown(tiny_run_args, tmp_path, capfd, monkeypatch):
    cache = tmp_path / "a-cache-folder-whose-name-is-long-enough-to-push-every-path-in-it-past-eighty-columns"
    monkeypatch.setenv("DISTILBENCH_CACHE", str(cache))  # a fresh cache: the teacher and its outputs are built here
    results = Path(tiny_run_args[tiny_run_args.index("--results") + 1])
    argv = ["run", "--objective", "ted", "--seeds", "2", "--no-baseline", *tiny_run_args, "--progress"]
    capfd.readouterr()
    assert main(argv) == 0
    out, err = capfd.readouterr()

    # Stage I (filters) trains once, on seed 0; seed 1 reads it; both seeds run Stage II (distil)
    assert re.search(r"^ted seed 0, Stage I \(filters\): step (\d+)/\1 ", err, re.M), err
    for seed in (0, 1):
        assert re.search(rf"^ted seed {seed}, Stage II \(distil\): step (\d+)/\1 ", err, re.M), err
    assert not re.search(r"^ted seed 1, Stage I \(", err, re.M)
    assert re.search(r"^ted seed 1: Stage I \(filters\) read from its cache /\S+\.pt$", err, re.M), err

    # long paths stay on one line: the teacher's folder and the teacher-output cache's, in full
    miss = re.search(r"^teacher cache miss: fine-tuning .* -> (\S+)$", err, re.M)
    assert miss and Path(miss.group(1)).is_dir() and len(miss.group(0)) > 80, err
    assert Path(miss.group(1)).parent == cache / "teachers"
    outputs = re.search(r"^teacher-output cache: computing .* -> (\S+)$", err, re.M)
    assert outputs and outputs.group(1).startswith(str(cache)), err

    # the table's title: the task and score, then the cut-down settings whole on its second line (issue 16: a copied
    # table says it is not full size); the student and teacher on one caption line below the table
    lines = out.splitlines()
    at = next(k for k, line in enumerate(lines) if line.strip() == "rte dev accuracy (%)")
    settings = lines[at + 1].strip()
    assert settings.startswith("settings: ") and "epochs=1" in settings, out
    assert settings.endswith("max_eval_examples=24, max_train_examples=48, teacher_epochs=1.0"), out
    assert lines[at + 2].startswith("┏"), out  # the title has two lines, no more: the settings line did not wrap
    caption = [line for line in lines if line.startswith("student ")]
    assert len(caption) == 1 and caption[0].endswith(f"teacher {tiny_run_args[tiny_run_args.index('--teacher') + 1]}")

    times = breakdown(out)
    assert times["teacher"] > 0 and times["students"] > 0
    assert times["caches"] > 0 and times["Stage I"] > 0  # TED's teacher outputs and filters were built in this run
    # the phases do not overlap; the total also holds reading the data (each value is rounded to 0.1 s)
    assert sum(v for k, v in times.items() if k != "total") <= times["total"] + 0.2

    # the same command again: nothing trained, the skip line names the store in full, the breakdown still closes
    assert main(argv) == 0
    out, err = capfd.readouterr()
    assert f"2 run(s) already stored in {results}, skipped" in err.splitlines()
    assert "Stage II" not in err
    again = breakdown(out)
    assert again["Stage I"] == 0.0 and again["caches"] == 0.0 and again["students"] < 1.0


def test_kd_progress_lines_carry_no_stage(tiny_run_args, capfd):
    """A one-stage objective keeps its plain label: the stage is named only where there is more than one."""
    capfd.readouterr()
    assert main(["run", "--objective", "kd", "--no-baseline", *tiny_run_args, "--progress"]) == 0
    out, err = capfd.readouterr()
    assert re.search(r"^kd seed 0: step (\d+)/\1 ", err, re.M), err
    assert "Stage" not in err
    assert breakdown(out)["Stage I"] == 0.0

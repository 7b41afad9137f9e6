"""--workers: runs in several processes write the same rows as one; a killed worker loses only its own run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distilbench.cli import main
from distilbench.results.store import ResultsStore
from distilbench.config import parse_workers as parse
from distilbench.training.runs.workers import resolve

ROOT = Path(__file__).resolve().parents[1]


def _scores(path: Path) -> dict:
    return {(r["objective"], r["seed"]): (r["run_key"], r["score"]) for r in ResultsStore(path).rows()}


def test_resolve_and_parse(monkeypatch):
    import distilbench.training.runs.workers as W

    monkeypatch.setattr(W, "cores", lambda: 2)
    assert resolve("1", 8) == (1, 2) and resolve("2", 8) == (2, 1) and resolve("4", 3) == (3, 1)
    assert resolve("auto", 8) == (2, 1) and resolve("auto", 8, accelerator=True) == (1, 2)
    assert resolve("auto", 1) == (1, 2)  # one run: one process with every core
    assert parse("auto") == "auto" and parse("3") == "3"
    from distilbench.errors import UsageError

    for bad in ("0", "-1", "two", ""):
        with pytest.raises(UsageError, match="--workers must be a positive integer or auto"):
            parse(bad)


def test_two_workers_write_the_same_rows_as_one(tiny_run_args, tmp_path):
    args = [a for a in tiny_run_args]
    i = args.index("--results")
    one, two = tmp_path / "one.sqlite", tmp_path / "two.sqlite"
    args[i + 1] = str(one)
    assert main(["run", "--objective", "kd", "--seeds", "2", *args]) == 0
    args[i + 1] = str(two)
    assert main(["run", "--objective", "kd", "--seeds", "2", "--workers", "2", *args]) == 0
    a, b = _scores(one), _scores(two)
    assert sorted(a) == [("kd", 0), ("kd", 1), ("none", 0), ("none", 1)] and sorted(b) == sorted(a)
    for k in a:
        assert a[k][0] == b[k][0]  # the same run identities: --workers is not part of them
        assert a[k][1] == pytest.approx(b[k][1], abs=1e-9)  # a tiny model's ops do not split over threads


HOOK = '''
import os, time, multiprocessing
import distilbench.training.runs.runner as R
_run_one = R.Runner.run_one
def run_one(self, objective, seed, *a, **k):
    # inside a --workers process only (known at call time, not at interpreter start): stall on kd seed 1 and announce
    # the pid, so that the test kills this worker in the middle of its run
    if multiprocessing.parent_process() is not None and objective.name == "kd" and seed == 1:
        open(os.environ["DISTILBENCH_TEST_MARK"], "w").write(str(os.getpid()))
        time.sleep(600)
    return _run_one(self, objective, seed, *a, **k)
R.Runner.run_one = run_one
'''


def test_a_killed_worker_loses_only_its_own_run(tiny_run_args, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    mark = tmp_path / "mark"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "DISTILBENCH_TEST_MARK": str(mark)}
    argv = [sys.executable, "-m", "distilbench", "run", "--objective", "kd", "--seeds", "3", "--workers", "2",
            *tiny_run_args]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not mark.exists() or not mark.read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    os.kill(int(mark.read_text()), signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "lost" in err and "kd seed 1" in err
    results = Path(tiny_run_args[tiny_run_args.index("--results") + 1])
    stored = sorted(_scores(results))
    assert stored == [("kd", 0), ("kd", 2), ("none", 0), ("none", 1), ("none", 2)]  # everything but the killed run
    mark.unlink()
    env.pop("PYTHONPATH")
    done = subprocess.run([sys.executable, "-m", "distilbench", "run", "--objective", "kd", "--seeds", "3",
                           *tiny_run_args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "5 run(s) already stored" in done.stderr
    assert sorted(_scores(results)) == [("kd", 0), ("kd", 1), ("kd", 2), ("none", 0), ("none", 1), ("none", 2)]


def test_a_suite_with_two_workers_stores_what_one_stores(tmp_path, tiny_teacher, glue_dir):
    from test_suite import tiny_suite

    path = tiny_suite(tmp_path, tiny_teacher, glue_dir)
    got = {}
    for workers in ("1", "2"):
        results = tmp_path / f"w{workers}.sqlite"
        assert main(["suite", str(path), "--results", str(results), "--out", str(tmp_path / f"r{workers}"),
                     "--workers", workers]) == 0
        got[workers] = _scores(results)
    assert sorted(got["1"]) == [("kd", 0), ("kd", 1), ("none", 0), ("none", 1)]
    assert {k: v[0] for k, v in got["1"].items()} == {k: v[0] for k, v in got["2"].items()}  # the same identities
    for k in got["1"]:
        assert got["1"][k][1] == pytest.approx(got["2"][k][1], abs=1e-9)
    assert (tmp_path / "r2" / "README.md").exists()


def _sleep_under_watch(pid_file: str) -> None:
    from distilbench.training.runs.workers import exit_with_parent

    exit_with_parent(interval_s=0.2)
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)


def test_a_worker_whose_parent_is_killed_exits(tmp_path):
    """A suite stopped by a signal must not leave its workers training on (they would write rows beside a rerun)."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import multiprocessing as mp, os, signal, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_workers import _sleep_under_watch\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=_sleep_under_watch, args=(sys.argv[1],), daemon=True)\n"
        "    p.start()\n"
        "    while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(pid_file)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{child}").exists() and \
            Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z", \
        "the worker outlived its killed parent"

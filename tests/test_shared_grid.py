"""Several `distilbench suite` processes sharing one results store divide the grid: every run is stored exactly once
and trained once, also when one worker is SIGKILLed in the middle of a run (the survivor takes the run over when its
lease runs out); and a bad store URL is one error line, exit 2, before anything is written."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO
from distilbench.cli import main
from distilbench.results.store import ResultsStore
from test_suite import tiny_suite


# Loaded into both worker processes: logs each run's start, holds each process's first run until both processes have
# started one (so both take part, whatever their start-up times), and SIGKILLs the process as its Nth run starts
# (after its claim: the run is leased to a process that is gone).
HOOK = '''
import os, signal, time
import distilbench.training.runs.runner as R
_run_one, _count = R.Runner.run_one, [0]
def run_one(self, objective, seed, *a, **k):
    d = os.environ["DISTILBENCH_TEST_DIR"]
    _count[0] += 1
    with open(os.path.join(d, "starts"), "a") as f:
        f.write(f"{os.getpid()} {self.run_label(objective, seed)}\\n")
    if _count[0] == 1:
        open(os.path.join(d, f"ready-{os.getpid()}"), "w").close()
        deadline = time.time() + 600
        while sum(n.startswith("ready-") for n in os.listdir(d)) < 2 and time.time() < deadline:
            time.sleep(0.1)
    if str(_count[0]) == os.environ.get("DISTILBENCH_TEST_KILL_AT"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _run_one(self, objective, seed, *a, **k)
R.Runner.run_one = run_one
'''


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_store(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "shared.sqlite")
    return request.getfixturevalue("pg_database")


def test_two_suite_workers_divide_the_grid_and_survive_a_killed_one(shared_store, tmp_path, tiny_teacher, glue_dir):
    suite = tiny_suite(tmp_path, tiny_teacher, glue_dir, seeds=[0, 1, 2])  # none and kd × 3 seeds = 6 runs
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(marks), str(REPO)]), "DISTILBENCH_TEST_DIR": str(marks),
           "DISTILBENCH_LEASE_S": "2", "DISTILBENCH_WORKERS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs, logs = {}, {}
    for name, kill in (("a", "2"), ("b", "")):
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "wb") as log:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "distilbench", "suite", str(suite), "--results", shared_store,
                 "--out", str(tmp_path / f"report-{name}")],
                cwd=REPO, env={**env, "DISTILBENCH_TEST_KILL_AT": kill}, stdout=log, stderr=subprocess.STDOUT)
    # b first: until the test reaps it, the killed a is a zombie that looks alive, so b must wait for its lease to
    # run out rather than see at once that it died
    assert procs["b"].wait(timeout=900) == 0, logs["b"].read_text()[-3000:]
    assert procs["a"].wait(timeout=60) == -9, logs["a"].read_text()[-3000:]
    pid = {name: p.pid for name, p in procs.items()}

    starts = [line.split(" ", 1) for line in (marks / "starts").read_text().splitlines()]
    killed = [label for p, label in starts if int(p) == pid["a"]][1]  # a's second run: killed as it started
    assert Counter(label for _, label in starts) == {label: 1 + (label == killed) for _, label in starts}  # each run started once, the killed one twice
    assert [int(p) for p, label in starts if label == killed] == [pid["a"], pid["b"]]

    with ResultsStore(shared_store) as store:
        rows = store.rows()
        assert store.live_leases() == []  # every lease ended with its row
    assert sorted((r["objective"], r["seed"]) for r in rows) == [(o, s) for o in ("kd", "none") for s in range(3)]
    assert len({r["run_key"] for r in rows}) == 6
    writer = {f"rte/{r['objective']}/{r['init']} seed {r['seed']}": int(r["extra"]["worker"].split(":")[1]) for r in rows}
    assert writer[killed] == pid["b"]  # the survivor took the killed run over
    assert set(writer.values()) == {pid["a"], pid["b"]}  # both workers stored runs: the grid was divided
    assert all(writer[label] == int(p) for p, label in starts if label != killed)  # each stored by who trained it
    log_b = logs["b"].read_text()
    assert f"{killed}: taking it over from" in log_b.replace("\n", " ")
    report = (tmp_path / "report-b" / "README.md").read_text()
    assert "6 runs in 2 cells" in report  # the survivor's report holds the whole grid, the taken-over run included


@pytest.mark.parametrize("url, expected", [
    ("mysql://user@localhost/db", "unknown database scheme 'mysql'; accepted: an SQLite file path, sqlite:///PATH, or "
                                  "postgresql[+DRIVER]://"),
    ("sqlite://relative.sqlite", "an SQLite URL is sqlite:///PATH"),
    ("postgresql+psycopg2://someone:secret@127.0.0.1:{port}/db", "cannot open results database "
                                                                  "postgresql+psycopg2://someone:***@127.0.0.1:{port}/db: "),
    ("postgresql+nodriver://user@localhost/db", "its database driver is not installed"),
])
def test_a_bad_store_url_is_one_line_and_exit_2(url, expected, tiny_run_args, tmp_path, capfd):
    import socket

    with socket.socket() as s:  # a port nothing listens on: the server is unreachable
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, expected = url.format(port=port), expected.format(port=port)
    args = list(tiny_run_args)
    args[args.index("--results") + 1] = url
    before = sorted(Path(os.environ["DISTILBENCH_CACHE"]).rglob("*"))
    for argv in (["run", "--objective", "kd", *args], ["report", "--results", url, "--out", str(tmp_path / "rep")]):
        capfd.readouterr()
        assert main(argv) == 2
        err = capfd.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("distilbench: error: ") and expected in err[0], err
        assert "secret" not in err[0]
    assert not (tmp_path / "rep").exists() and sorted(Path(os.environ["DISTILBENCH_CACHE"]).rglob("*")) == before
    assert not any(tmp_path.rglob("*.sqlite"))


def test_run_waits_for_a_run_another_worker_holds_then_takes_it_over(tiny_run_args, monkeypatch, capsys):
    """`distilbench run` skips a run whose lease a live worker elsewhere holds, trains the rest, then waits, naming the
    run and its holder, until the holder stores it or its lease runs out; here it runs out and the run is trained."""
    monkeypatch.setenv("DISTILBENCH_LEASE_S", "1")
    other = "another-machine:4242:0000abcd"  # on another host: alive as far as this machine can tell
    original, tries = ResultsStore.claim, []

    def claim(self, key, label, **kw):
        if "/kd/" in label:
            tries.append(label)
            if len(tries) <= 3:  # the other worker claimed kd seed 0 first and renews it, then it dies
                assert original(self, key, label, holder=other).claimed
        return original(self, key, label, **kw)

    monkeypatch.setattr(ResultsStore, "claim", claim)
    assert main(["run", "--objective", "kd", "--seeds", "1", *tiny_run_args]) == 0
    err = " ".join(capsys.readouterr().err.split())  # undo the console's line wrapping
    label = "rte/kd/layers:1,2,3 seed 0"
    assert f"{label}: another worker ({other}) is training it; skipped for now" in err
    assert f"waiting for 1 run(s) that other workers are training: {label} ({other})" in err
    assert f"{label}: taking it over from {other}" in err
    assert len(tries) >= 4  # the takeover came only after the other worker stopped renewing
    with ResultsStore(tiny_run_args[tiny_run_args.index("--results") + 1]) as store:
        rows = store.rows()
        assert store.live_leases() == []
    assert sorted((r["objective"], r["seed"]) for r in rows) == [("kd", 0), ("none", 0)]
    assert all(r["extra"]["worker"] == store.holder for r in rows)


def test_workers_2_skip_a_held_run_then_the_parent_waits_and_takes_it_over(tiny_run_args, monkeypatch, capsys):
    """Under `--workers 2` a run another machine's worker holds is skipped by the spawned worker that meets it (HELD),
    the others are trained, and the calling process waits for it, naming it, until its lease runs out; then it trains
    it itself. Nothing is trained twice."""
    import threading

    import distilbench.training.runs.runner as runner_mod
    from distilbench.hashing import run_key

    monkeypatch.setenv("DISTILBENCH_LEASE_S", "2")  # read by the spawned workers too
    other = "another-machine:4242:0000abcd"
    results = tiny_run_args[tiny_run_args.index("--results") + 1]
    original_jobs, held = runner_mod.Runner.jobs, {}

    def jobs(self, todo, record, teacher_net):  # after the caches, before the workers start: kd seed 0 is taken elsewhere
        kd = next(o for o in self.plan.objectives if o.name == "kd")
        held["key"] = run_key(self.identity(kd, record, 0))
        assert self.plan.store.claim(held["key"], self.run_label(kd, 0), holder=other).claimed
        threading.Thread(target=renew, daemon=True).start()
        return original_jobs(self, todo, record, teacher_net)

    def renew():  # the other worker renews its lease until the calling process has begun to wait for it
        with ResultsStore(results) as store:
            deadline = time.time() + 300
            while time.time() < min(deadline, held.get("waiting", deadline) + 1.0):
                assert store.renew(held["key"], holder=other)
                time.sleep(0.3)
        held["stopped"] = True  # then it dies: its lease runs out 2 s later

    original_finish = runner_mod.Runner.finish_held

    def finish_held(self, runs, record, teacher_net):
        held["waiting"] = time.time()
        held["rows_then"] = len(self.plan.store.rows())  # the workers had stored the three other runs by then
        return original_finish(self, runs, record, teacher_net)

    monkeypatch.setattr(runner_mod.Runner, "jobs", jobs)
    monkeypatch.setattr(runner_mod.Runner, "finish_held", finish_held)
    assert main(["run", "--objective", "kd", "--seeds", "2", "--workers", "2", *tiny_run_args]) == 0
    err = " ".join(capsys.readouterr().err.split())
    label = "rte/kd/layers:1,2,3 seed 0"
    assert "4 run(s) in 2 worker process(es) × 1 thread(s)" in err
    assert f"waiting for 1 run(s) that other workers are training: {label} ({other})" in err
    assert f"{label}: taking it over from {other}" in err and held.get("stopped") and held["rows_then"] == 3
    with ResultsStore(results) as store:
        rows = store.rows()
        assert store.live_leases() == []
    assert sorted((r["objective"], r["seed"]) for r in rows) == [("kd", 0), ("kd", 1), ("none", 0), ("none", 1)]
    trained_by = {(r["objective"], r["seed"]): r["extra"]["worker"] for r in rows}
    assert trained_by[("kd", 0)] == store.holder  # the calling process took it over
    assert len(set(trained_by.values()) - {store.holder}) == 2  # the other three were trained by the two workers

"""`--launcher slurm`: options checked against their meaning, SQLite refused, nothing submitted or written on bad
input; and against a real single-node Slurm (`.ci/slurm-up.sh`) with PostgreSQL stores: a 2-task suite array stores
every run exactly once, a scancelled task's run is taken over by the other, a 2-task search array fills its study."""
from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO
from distilbench.cli import main
from distilbench.cluster import SlurmOptions, check_shared_store, local_argv, slurm_options, task_argv
from distilbench.errors import UsageError
from distilbench.results.store import ResultsStore
from test_suite import tiny_suite


# --------------------------------------------------------------------------- options, refusals


def test_options_merge_the_suite_block_and_the_flags_flags_winning():
    opts = slurm_options({"partition": "cpu", "time": 30, "cpus": 4, "extra": ["--qos=low"]},
                         {"partition": "gpu", "gpus": 1, "time": None, "extra": None, "setup": ["module load cuda"]})
    assert opts == SlurmOptions(partition="gpu", time=30, cpus=4, gpus=1, extra=("--qos=low",), setup=("module load cuda",))
    params = opts.executor_parameters()
    assert params["partition"] == "gpu" and params["gpus_per_task"] == 1 and params["cpus_per_task"] == 4
    assert params["additional_parameters"] == {"qos": "low"} and params["setup"] == ["module load cuda"]
    assert slurm_options(None, {"mem_gb": 1.5}).executor_parameters()["mem"] == "1536M"


@pytest.mark.parametrize("block, says", [
    ({"time": 0}, "slurm time 0: expected minutes, >= 1"),
    ({"cpus": "many"}, "slurm cpus 'many': expected CPUs per task"),
    ({"gpus": -1}, "slurm gpus -1: expected GPUs per task, >= 0"),
    ({"mem_gb": 0}, "slurm mem_gb 0: expected GB per task, > 0"),
    ({"extra": ["qos=high"]}, "expected sbatch options such as --qos=high"),
    ({"requeue": "yes"}, "slurm requeue 'yes': expected true or false"),
    ({"nodes": 2}, "unknown option 'nodes'; accepted: partition, time"),
])
def test_each_slurm_option_is_checked_against_its_meaning(block, says):
    with pytest.raises(UsageError, match=says.replace("(", r"\(")):
        slurm_options(block, {})


def test_memory_per_task_is_sized_from_the_scales_committed_report(tmp_path):
    import sqlite3

    from distilbench.cluster import default_memory, measured_mem_gb

    report = tmp_path / "reports" / "x-small"
    assert measured_mem_gb(report) is None
    report.mkdir(parents=True)
    with sqlite3.connect(report / "results.sqlite") as con:
        con.execute("create table runs (run_key text, peak_mem_mb real)")
        con.executemany("insert into runs values (?, ?)", [("a", 2000.0), ("b", 2249.1), ("c", None)])
    assert measured_mem_gb(report) == (3.0, 2249.1)  # 2249.1 MiB x 1.25 = 2.75 GB, rounded up to 3.0
    sized, said = default_memory(slurm_options(None, {}), report)
    assert sized.mem_gb == 3.0 and sized.executor_parameters()["mem"] == "3072M"
    assert said == f"memory per array task: 3 GB, the largest run in {report} (2249 MiB resident) + 25% (--slurm-mem-gb overrides)"
    given, said = default_memory(slurm_options(None, {"mem_gb": 1.5}), report)
    assert given.mem_gb == 1.5 and said == "memory per array task: 1.5 GB (given)"
    none, said = default_memory(slurm_options(None, {}), tmp_path / "nothing")
    assert none.mem_gb is None and "the partition's default" in said


def test_array_tasks_run_the_same_command_locally_without_a_report():
    argv = ["suite", "s.yaml", "--launcher", "slurm", "--jobs", "4", "--slurm-partition=gpu", "--slurm-extra",
            "--qos=high", "--slurm-requeue", "--results", "postgresql://u@h/db", "--report"]
    assert local_argv(argv) == ["suite", "s.yaml", "--results", "postgresql://u@h/db"]
    assert task_argv(argv) == ["suite", "s.yaml", "--results", "postgresql://u@h/db", "--no-report"]


@pytest.mark.parametrize("store", ["runs/results.sqlite", "sqlite:///runs/results.sqlite"])
def test_sqlite_is_refused_for_slurm(store):
    with pytest.raises(UsageError, match="needs a PostgreSQL store .* SQLite over a network file system is unsafe"):
        check_shared_store(store, "--results")
    check_shared_store("postgresql+psycopg2://u@h:5432/db", "--results")


@pytest.mark.parametrize("extra, says", [
    (["--launcher", "slurm", "--jobs", "2"], "--launcher slurm needs a PostgreSQL store"),
    (["--launcher", "slurm", "--jobs", "0"], "--jobs must be a count of array tasks >= 1"),
    (["--jobs", "2"], "--jobs is the size of a Slurm job array: give it with --launcher slurm"),
    (["--launcher", "slurm", "--jobs", "2", "--results", "postgresql://u@h/db", "--slurm-time", "0"], "slurm time 0"),
])
def test_bad_launcher_input_is_one_line_exit_2_and_nothing_submitted(extra, says, tmp_path, tiny_teacher, glue_dir,
                                                                     capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("distilbench.cluster.submit", lambda *a, **k: pytest.fail("submitted"))
    suite = tiny_suite(tmp_path, tiny_teacher, glue_dir)
    capfd.readouterr()
    assert main(["suite", str(suite), "--results", str(tmp_path / "r.sqlite"), *extra]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "r.sqlite").exists() and not (tmp_path / "slurm-logs").exists()


def test_a_local_suite_with_no_report_stores_its_runs_and_writes_no_report(tmp_path, tiny_teacher, glue_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = tiny_suite(tmp_path, tiny_teacher, glue_dir)
    store = tmp_path / "r.sqlite"
    assert main(["suite", str(suite), "--results", str(store), "--no-report"]) == 0
    assert len(ResultsStore(store).rows()) == 4 and not (tmp_path / "reports").exists()
    assert main(["suite", str(suite), "--results", str(store)]) == 0  # nothing left to train: the report only
    assert (tmp_path / "reports" / "tiny" / "README.md").exists()


def test_search_array_refuses_a_sqlite_study(tiny_run_args, capfd, monkeypatch):
    monkeypatch.setattr("distilbench.cluster.submit", lambda *a, **k: pytest.fail("submitted"))
    argv = ["search", "--objective", "kd", "--trials", "2", "--launcher", "slurm", "--jobs", "2", *tiny_run_args]
    assert main(argv) == 2
    assert "--launcher slurm needs a PostgreSQL store" in capfd.readouterr().err


# --------------------------------------------------------------------------- on a real Slurm

# Loaded into every run's process: logs each run's start with the array task it ran in, and holds each task's first
# run until both tasks have started one (so both take part, whatever their start-up times).
HOOK = '''
import os, time
import distilbench.training.runs.runner as R
_run_one, _count = R.Runner.run_one, [0]
def run_one(self, objective, seed, *a, **k):
    d = os.environ["DISTILBENCH_TEST_DIR"]
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "?")
    _count[0] += 1
    with open(os.path.join(d, "starts"), "a") as f:
        f.write(f"{task} {self.run_label(objective, seed)}\\n")
    if _count[0] == 1:
        open(os.path.join(d, f"ready-{task}"), "w").close()
        deadline = time.time() + 300
        while sum(n.startswith("ready-") for n in os.listdir(d)) < 2 and time.time() < deadline:
            time.sleep(0.1)
    if os.path.exists(os.path.join(d, f"hold-{task}")):
        time.sleep(3600)  # the test scancels this task while it holds this run
    return _run_one(self, objective, seed, *a, **k)
R.Runner.run_one = run_one
'''


def _env(marks: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(marks), str(REPO)]), "DISTILBENCH_TEST_DIR": str(marks),
            "DISTILBENCH_LEASE_S": "2", "DISTILBENCH_WORKERS": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _submit(argv: list[str], env: dict[str, str], capsys, monkeypatch, cwd: Path) -> str:
    monkeypatch.chdir(cwd)  # the tasks run where the array was submitted: a report would land in cwd/reports
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # sbatch exports the submitting environment to the tasks
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("submitted Slurm array ") and "squeue -j" in out, out
    return out.split()[3].rstrip(":")


def _squeue(array: str) -> list[str]:
    return subprocess.run(["squeue", "-h", "-j", array, "-o", "%i %T"], capture_output=True, text=True).stdout.split("\n")


def _wait(done, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not done():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(1)


def _finished(array: str) -> bool:
    return not any(line.strip() for line in _squeue(array))


def _logs(folder: Path) -> str:
    return "\n".join(f"== {p}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(folder.rglob("*.out")) + sorted(folder.rglob("*.err")))


@pytest.mark.integration
def test_a_suite_array_stores_every_run_exactly_once(slurm_conf, pg_database, tmp_path, tiny_teacher, glue_dir,
                                                      capsys, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "sitecustomize.py").write_text(HOOK)
    suite = tiny_suite(tmp_path, tiny_teacher, glue_dir)  # none and kd × 2 seeds = 4 runs
    logs = tmp_path / "logs"
    array = _submit(["suite", str(suite), "--results", pg_database, "--launcher", "slurm", "--jobs", "2",
                     "--slurm-cpus", "1", "--slurm-time", "20", "--slurm-logs", str(logs)], _env(marks), capsys, monkeypatch,
                    tmp_path)
    _wait(lambda: _finished(array), 600, f"array {array}")
    rows = ResultsStore(pg_database).rows()
    keys = Counter(r["run_key"] for r in rows)
    assert len(keys) == 4 and set(keys.values()) == {1}, _logs(logs)
    starts = (marks / "starts").read_text().split("\n")
    assert {line.split()[0] for line in starts if line} == {"0", "1"}  # both tasks trained runs
    assert not (tmp_path / "reports").exists()  # array tasks write no report (a local suite writes reports/tiny)


@pytest.mark.integration
def test_a_scancelled_task_loses_only_its_run_and_the_other_finishes_the_grid(slurm_conf, pg_database, tmp_path,
                                                                               tiny_teacher, glue_dir, capsys, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / "sitecustomize.py").write_text(HOOK)
    (marks / "hold-0").write_text("")  # task 0 hangs in its first run until cancelled
    suite = tiny_suite(tmp_path, tiny_teacher, glue_dir, seeds=[0, 1, 2])  # 6 runs
    logs = tmp_path / "logs"
    array = _submit(["suite", str(suite), "--results", pg_database, "--launcher", "slurm", "--jobs", "2",
                     "--slurm-cpus", "1", "--slurm-time", "20", "--slurm-logs", str(logs)], _env(marks), capsys, monkeypatch,
                    tmp_path)
    _wait(lambda: (marks / "ready-0").exists() and (marks / "ready-1").exists(), 300, "both tasks to start a run")
    subprocess.run(["scancel", f"{array}_0"], check=True)
    _wait(lambda: _finished(array), 600, f"array {array} after scancel")
    rows = ResultsStore(pg_database).rows()
    keys = Counter(r["run_key"] for r in rows)
    assert len(keys) == 6 and set(keys.values()) == {1}, _logs(logs)
    starts = [line.split(" ", 1) for line in (marks / "starts").read_text().split("\n") if line]
    held = [label for task, label in starts if task == "0"]
    assert held and all(label in {lbl for t, lbl in starts if t == "1"} for label in held)  # task 1 took them over


@pytest.mark.integration
def test_a_search_array_fills_its_study(slurm_conf, postgres_url, pg_database, tiny_run_args, tmp_path, capsys,
                                        monkeypatch):
    import optuna

    trials = 4
    args = [a for a in tiny_run_args]
    args[args.index("--results") + 1] = pg_database
    logs = tmp_path / "logs"
    env = {"DISTILBENCH_WORKERS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    array = _submit(["search", "--objective", "kd", "--trials", str(trials), "--study", "arr", "--pruner", "none",
                     "--seeds", "1", *args, "--launcher", "slurm", "--jobs", "2", "--slurm-cpus", "1",
                     "--slurm-logs", str(logs)], env, capsys, monkeypatch, tmp_path)
    _wait(lambda: _finished(array), 600, f"search array {array}")
    study = optuna.load_study(study_name="arr", storage=pg_database)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert trials <= len(finished) <= trials + 1, _logs(logs)  # each task stops at N; the other may be mid-trial then
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    assert not (tmp_path / "reports").exists()  # the tasks write no report; the printed local command does


def test_an_sbatch_refusal_is_one_line_and_exit_2(tmp_path, tiny_teacher, glue_dir, pg_database, capfd, monkeypatch):
    import shutil

    if not shutil.which("sbatch"):
        pytest.skip("sbatch is not installed (Debian: slurm-wlm)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken-slurm.conf").write_text("# no ClusterName\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "broken-slurm.conf"))  # sbatch refuses it at once
    suite = tiny_suite(tmp_path, tiny_teacher, glue_dir)
    capfd.readouterr()
    argv = ["suite", str(suite), "--results", pg_database, "--launcher", "slurm", "--jobs", "2",
            "--slurm-logs", str(tmp_path / "logs")]
    assert main(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sbatch refused the array: " in err[0] and "ClusterName" in err[0], err

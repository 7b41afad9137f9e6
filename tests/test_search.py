"""`distilbench search` (Optuna): every objective's space samples valid configs, dev is never read, a rerun continues
the study, pruning stops a poor trial seed by seed, a killed worker's trial is retried, `run --params best:STUDY`
takes the best trial, and two workers share one study in a real PostgreSQL server without losing or duplicating a
trial."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch

import distilbench.training.runs.plan as plan_mod
import distilbench.training.runs.runner as runner_mod
from conftest import REPO
from distilbench.cli import main
from distilbench.config import RunConfig, option_names
from distilbench.objectives import OBJECTIVES, get_objective
from distilbench.search import open_storage, suggest

torch.set_num_threads(1)


def _args(tiny_run_args, tmp_path, study, trials, *extra):
    return ["search", *tiny_run_args, "--objective", "kd", "--study", study, "--trials", str(trials), "--epochs", "1",
            "--out", str(tmp_path / f"report-{study}"), *extra]


def _storage(tiny_run_args) -> str:
    results = Path(tiny_run_args[tiny_run_args.index("--results") + 1])
    return f"sqlite:///{results.with_name('search.sqlite').resolve()}"


def _study(url, name):
    return optuna.load_study(study_name=name, storage=open_storage(url))


@pytest.mark.parametrize("name", sorted(OBJECTIVES.names()) + ["att-kl+hid-seq"])
def test_every_objective_space_samples_valid_configs(name):
    cls = get_objective(name)
    space = cls.space()
    assert {"lr", "epochs", "batch_size"} <= set(space)
    fields = option_names()
    assert set(space) <= fields, set(space) - fields  # every searched name is a run option (a field or declared)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(15):
        trial = study.ask()
        values = suggest(trial, space, fixed={"epochs"})
        assert "epochs" not in values  # a flag the user gave is fixed, never searched
        cfg = RunConfig(**values).validate()
        for key, spec in space.items():
            if key == "epochs":
                continue
            v = getattr(cfg, key)
            if spec[0] == "categorical":
                assert v in spec[1]
            else:
                assert spec[1] <= v <= spec[2], (key, v)
        study.tell(trial, 0.5)
    if name.startswith("ted"):
        assert space["beta"][1:3] == (10.0, 1000.0)  # TED's alpha_2 range, paper 001 §5.3


def test_search_never_reads_dev_and_a_rerun_continues_the_study(tiny_run_args, tmp_path, monkeypatch, capsys):
    real = plan_mod.load_split
    splits = []

    def guarded(task, split, data_dir):
        splits.append(split)
        if split == "dev":
            raise AssertionError("dev was read during a search")
        return real(task, split, data_dir)

    monkeypatch.setattr(plan_mod, "load_split", guarded)
    import distilbench.training.loop.harness as harness_mod
    evaluated = []
    real_eval = harness_mod.evaluate
    monkeypatch.setattr(harness_mod, "evaluate", lambda model, enc, *a, **k: evaluated.append(len(enc)) or real_eval(model, enc, *a, **k))

    assert main(_args(tiny_run_args, tmp_path, "s1", 2, "--seeds", "2")) == 0
    assert splits and set(splits) == {"train"}
    study = _study(_storage(tiny_run_args), "s1")
    first = [(t.number, t.params, t.value) for t in study.trials]
    assert len(first) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    for t in study.trials:  # the value is the mean over the seeds of the selection score, reported seed by seed
        assert t.value == pytest.approx((t.user_attrs["seed_0"] + t.user_attrs["seed_1"]) / 2)
        assert sorted(t.intermediate_values) == [0, 1]
    # the selection split is 10% of 48 examples: every evaluation during the search saw 4 or 5 examples, never dev's 24
    assert evaluated and set(evaluated) <= {4, 5}

    assert main(_args(tiny_run_args, tmp_path, "s1", 3, "--seeds", "2")) == 0  # same study: continues to 3 trials
    study = _study(_storage(tiny_run_args), "s1")
    assert [(t.number, t.params, t.value) for t in study.trials][:2] == first
    assert [t.number for t in study.trials] == [0, 1, 2]
    report = (tmp_path / "report-s1" / "README.md").read_text()
    assert "Trials: 3 (3 complete" in report and "--params best:s1" in report
    assert (tmp_path / "report-s1" / "trials.csv").read_text().count("\n") == 4
    assert (tmp_path / "report-s1" / "history.png").stat().st_size > 1000

    monkeypatch.setattr(plan_mod, "load_split", real)
    best = study.best_params
    argv = ["run", *tiny_run_args, "--objective", "kd", "--params", "best:s1", "--no-baseline", "--epochs", "1"]
    assert main(argv) == 0
    import sqlite3
    import json
    conn = sqlite3.connect(tiny_run_args[tiny_run_args.index("--results") + 1])
    params = json.loads(conn.execute("SELECT params FROM runs").fetchone()[0])
    conn.close()
    assert set(best) == {"lr", "temperature", "alpha_kd"}  # epochs and batch size were fixed by flags
    assert params["hparams"]["lr"] == pytest.approx(best["lr"]) and params["hparams"]["batch_size"] == 8
    assert params["objective_params"]["temperature"] == pytest.approx(best["temperature"])


def test_params_best_of_a_missing_study_is_one_clear_line(tiny_run_args, capfd):
    capfd.readouterr()
    assert main(["run", *tiny_run_args, "--params", "best:nope"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no study 'nope'" in err[0]


def test_pruning_stops_a_trial_whose_first_seeds_are_poor(tiny_run_args, tmp_path, monkeypatch):
    """Seeds are reported one by one: a trial far below the others at seed 0 stops there (MedianPruner)."""
    fits = []

    def fake_fit(self, objective_cls, seed, record, teacher_net):
        score = 0.9 if self.cfg.temperature < 4 else 0.1  # the enqueued "poor" trial has temperature 6
        fits.append((self.cfg.temperature, seed))
        return SimpleNamespace(result=SimpleNamespace(best_select_score=score + 0.01 * seed))

    monkeypatch.setattr(runner_mod.Runner, "fit", fake_fit)
    url = _storage(tiny_run_args)
    study = optuna.create_study(study_name="prune", storage=open_storage(url), direction="maximize")
    base = {"lr": 5e-5, "alpha_kd": 1.0}
    for temperature in (2.0, 2.5, 6.0):
        study.enqueue_trial({**base, "temperature": temperature})
    assert main(_args(tiny_run_args, tmp_path, "prune", 3, "--seeds", "3", "--pruner", "median")) == 0
    trials = _study(url, "prune").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert sorted(k for k in trials[2].user_attrs if k.startswith("seed_")) == ["seed_0"]  # stopped after one seed
    assert [s for t, s in fits if t == 6.0] == [0]


def _wait_for(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_a_killed_workers_trial_is_retried(tiny_run_args, tmp_path):
    url = _storage(tiny_run_args)
    argv = _args(tiny_run_args, tmp_path, "killed", 2, "--heartbeat", "1", "--seeds", "3")
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "distilbench", *argv], cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)

    def running():  # started, every parameter drawn and seed 0 reported (killed before that, the retry would have
        try:            # fewer parameters to repeat than the search space: under load, lr was drawn but alpha_kd not yet)
            return any(t.state.name == "RUNNING" and t.intermediate_values for t in _study(url, "killed").trials)
        except KeyError:
            return False

    _wait_for(running, 240, "the first trial to draw its parameters and report seed 0")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    time.sleep(3)  # past the grace period (2 heartbeats): the trial is stale
    assert main(argv) == 0
    trials = _study(url, "killed").trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == failed[0].params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


# ------------------------------------------------------------------------------------------------ PostgreSQL, 2 workers


# postgres_url: tests/conftest.py


def test_two_workers_share_one_study_in_postgres(postgres_url, tiny_run_args, tmp_path):
    trials = 8
    teacher = [a for a in tiny_run_args if a != "--no-progress"]
    i = teacher.index("--epochs")
    assert main(["teacher", *[("--model" if a == "--teacher" else a) for a in teacher[:i] + teacher[i + 2:]]]) == 0
    logs = [tmp_path / f"w{k}.log" for k in range(2)]
    procs = []
    for k, log in enumerate(logs):
        # 2 seeds x 2 epochs per trial: long enough that the second worker, started once the first is searching,
        # joins the study while trials remain
        argv = _args(tiny_run_args, tmp_path / f"w{k}", "shared", trials, "--storage", postgres_url, "--pruner", "none",
                     "--seeds", "2", "--epochs", "2")
        with open(log, "wb") as handle:
            procs.append(subprocess.Popen([sys.executable, "-m", "distilbench", *argv], cwd=REPO, env=_env(),
                                          stdout=handle, stderr=subprocess.STDOUT))
        if k == 0:
            def searching():
                try:
                    return len(_study(postgres_url, "shared").trials) > 0
                except KeyError:
                    return False
            _wait_for(searching, 300, "the first worker to start a trial")
    for proc, log in zip(procs, logs):
        assert proc.wait(timeout=900) == 0, log.read_text()[-2000:]
    study = _study(postgres_url, "shared")
    got = study.trials
    numbers = [t.number for t in got]
    assert numbers == list(range(len(got)))  # no gap, no duplicate
    assert trials <= len(got) <= trials + 1  # MaxTrialsCallback: each worker stops at N; one may be mid-trial then
    assert all(t.state.name == "COMPLETE" for t in got)
    assert len({t._trial_id for t in got}) == len(got)
    workers = {t.user_attrs["worker"] for t in got}
    assert len(workers) == 2, workers  # both processes did trials
    for t in got:  # each trial's value is exactly what its worker computed from its seeds
        assert t.value == pytest.approx((t.user_attrs["seed_0"] + t.user_attrs["seed_1"]) / 2)


def test_workers_2_share_the_study_in_two_processes(tiny_run_args, tmp_path, capsys):
    """`search --workers 2`: two spawned processes × 1 thread run trials of one study (the teacher is cached first, by
    the parent); every trial is stored once, with the value its worker computed, and the report counts them all."""
    trials = 4
    assert main(_args(tiny_run_args, tmp_path, "pool", trials, "--seeds", "2", "--pruner", "none", "--workers", "2")) == 0
    assert "2 worker processes × 1 thread(s)" in capsys.readouterr().err
    got = _study(_storage(tiny_run_args), "pool").trials
    assert [t.number for t in got] == list(range(len(got))) and trials <= len(got) <= trials + 1
    assert all(t.state.name == "COMPLETE" for t in got)
    for t in got:
        assert t.value == pytest.approx((t.user_attrs["seed_0"] + t.user_attrs["seed_1"]) / 2)
    workers = {t.user_attrs["worker"] for t in got}
    assert len(workers) == 2 and os.getpid() not in {int(w.rsplit(":", 1)[1]) for w in workers}
    firsts = {}  # each worker's own sampler seed: their first proposals differ
    for t in got:
        firsts.setdefault(t.user_attrs["worker"], t.params)
    assert len({tuple(sorted(p.items())) for p in firsts.values()}) == 2
    assert f"Trials: {len(got)} ({len(got)} complete" in (tmp_path / "report-pool" / "README.md").read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_grid_runs_every_combination_once_and_fixes_the_rest(tiny_run_args, tmp_path, workers):
    """`--grid lr=... --grid batch_size=...` (paper 002's fine-tuning grid): every combination exactly once, the
    number of trials defaulting to the grid's size, with one worker or two (whose grid orders must agree: with a seed
    each they repeated points and skipped others); nothing else is searched."""
    args = list(tiny_run_args)
    del args[args.index("--batch-size"):args.index("--batch-size") + 2]
    argv = ["search", *args, "--objective", "none", "--study", "g", "--epochs", "1", "--out", str(tmp_path / "report-g"),
            "--grid", "lr=1e-4,3e-4", "--grid", "batch-size=4,8", "--workers", workers]
    assert main(argv) == 0
    study = _study(_storage(tiny_run_args), "g")
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted((t.params["lr"], t.params["batch_size"]) for t in study.trials) == \
        [(1e-4, 4), (1e-4, 8), (3e-4, 4), (3e-4, 8)]
    assert len({t.user_attrs["worker"] for t in study.trials}) == int(workers)
    assert main(argv) == 0 and len(_study(_storage(tiny_run_args), "g").trials) == 4  # done: a rerun adds nothing


@pytest.mark.parametrize("grid, message", [
    (["--grid", "lr=0,1e-4"], "--lr must be > 0"),
    (["--grid", "lr"], "write NAME=V1,V2"),
    (["--grid", "nonsense=1"], "no such option"),
    (["--grid", "max_length=64,128"], "not a hyper-parameter of kd"),
    (["--grid", "lr=1e-4,1e-4"], "listed twice"),
    (["--grid", "batch_size=8,16"], "both given"),  # tiny_run_args fixes --batch-size 8
    (["--grid", "temperature=-1"], "--temperature must be > 0"),
    (["--grid", "lr=nan"], "finite numbers"),
    (["--grid", "lr=1e-4,2e-4", "--trials", "3"], "a grid runs each once"),
])
def test_a_bad_grid_is_one_line(tiny_run_args, tmp_path, capsys, grid, message):
    argv = ["search", *tiny_run_args, "--objective", "kd", "--study", "bad", "--out", str(tmp_path / "r"), *grid]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_grid_never_continues_a_tpe_study(tiny_run_args, tmp_path, capsys):
    base = ["search", *tiny_run_args, "--objective", "none", "--study", "mixed", "--out", str(tmp_path / "r")]
    assert main([*base, "--trials", "1"]) == 0
    capsys.readouterr()
    assert main([*base, "--grid", "lr=1e-4,2e-4"]) == 2
    assert "was searched by TPE, this search is the grid" in capsys.readouterr().err
    assert len(_study(_storage(tiny_run_args), "mixed").trials) == 1


def test_a_grid_study_continues_only_as_the_same_grid(tiny_run_args, tmp_path, capsys):
    base = ["search", *tiny_run_args, "--objective", "none", "--study", "g2", "--out", str(tmp_path / "r")]
    assert main([*base, "--grid", "lr=1e-4,2e-4"]) == 0
    assert main([*base, "--grid", "lr=2e-4,1e-4"]) == 0  # the same grid, written in another order: nothing to add
    assert len(_study(_storage(tiny_run_args), "g2").trials) == 2
    capsys.readouterr()
    assert main([*base, "--trials", "3"]) == 2
    assert "was searched by the grid" in capsys.readouterr().err

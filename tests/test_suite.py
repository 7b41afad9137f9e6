"""Tests for `distilbench suite`: YAML checks and up-front name validation (nothing trains), the grid and option
precedence (a fake runner), and a real interrupted suite on the tiny teacher that resumes without retraining.
Torch is held to one thread, as in test_cli.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import distilbench.training.runs.runner as runner_mod
from distilbench.training import families
from conftest import no_training, read_csv, REPO
from distilbench.cli import main
from distilbench.objectives import OBJECTIVES
from distilbench.results.store import ResultsStore
from distilbench.suite import load_suite



pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def tiny_suite(tmp_path: Path, tiny_teacher: Path, glue_dir: Path, **over) -> Path:
    """A suite of the tiny teacher on a slice of real RTE: seconds per run."""
    spec = {"name": "tiny", "description": "tiny test suite", "tasks": ["rte"], "objectives": ["none", "kd"],
            "inits": ["first-k"], "teachers": [str(tiny_teacher)], "seeds": [0, 1],
            "settings": {"max_train_examples": 48, "max_eval_examples": 24, "epochs": 1, "teacher_epochs": 1,
                         "batch_size": 8, "progress": False, "data_dir": str(glue_dir)},
            "scales": {"cpu": {}, "paper": {"epochs": 10}}}
    spec.update(over)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def one_error_line(argv: list[str], capfd, monkeypatch) -> str:
    monkeypatch.setattr(runner_mod, "train", no_training)
    capfd.readouterr()
    assert main(argv) == 2
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("distilbench: error: "), err
    return err[0]


# --------------------------------------------------------------------------- refused before anything runs


def test_unknown_objectives_are_all_named_up_front(tmp_path, tiny_teacher, glue_dir, capfd, monkeypatch):
    path = tiny_suite(tmp_path, tiny_teacher, glue_dir, objectives=["kd", "att-foo", "kdd", "none"])
    results = tmp_path / "results.sqlite"
    line = one_error_line(["suite", str(path), "--results", str(results)], capfd, monkeypatch)
    assert "2 objective(s) not available" in line
    assert "'att-foo'" in line and "'kdd'" in line and "did you mean 'kd'" in line.lower()
    assert "Registered:" in line and "att-kl" in line
    assert not results.exists()  # nothing stored, no teacher trained


@pytest.mark.parametrize("over, expected", [
    ({"settings": {"objective": "kd"}}, "'objective' is set per cell by the suite grid"),
    ({"settings": {"epochz": 1}}, "unknown option 'epochz'"),
    ({"settings": {"lr": "fast"}}, "lr must be float"),
    ({"seeds": [0, 0]}, "seeds must be a count or a list of distinct non-negative integers"),
    ({"tasks": []}, "tasks must be a non-empty list"),
    ({"tasks": ["rtee"]}, "unknown task 'rtee'. Did you mean 'rte'?"),
    ({"inits": ["layers:1,2,9"]}, "out of range"),
    ({"task_settings": {"sst2": {"max_train_examples": 10}}}, "task_settings for sst2, which is not in tasks"),
    ({"objective": ["kd"]}, "unknown key(s) 'objective'"),
    ({"objectives": ["kd", {"kd": {"temprature": 4}}]}, "objectives: kd: unknown option 'temprature'"),
    ({"objectives": [{"kd": {"init": "first-k"}}]}, "'init' is set per cell by the suite grid"),
    ({"objectives": ["kd", {"kd": {"temperature": 4}}, {"kd": {"temperature": 4.0}}]},
     "lists kd [temperature=4.0] twice"),
    ({"objectives": [{"kd": {}, "none": {}}]}, "is neither an objective name nor one {NAME: {option: value}} entry"),
    ({"objectives": ["kd", {"kdd": {"temperature": 4}}]}, "1 objective(s) not available"),
])
def test_bad_suite_files(over, expected, tmp_path, tiny_teacher, glue_dir, capfd, monkeypatch):
    path = tiny_suite(tmp_path, tiny_teacher, glue_dir, **over)
    line = one_error_line(["suite", str(path), "--results", str(tmp_path / "r.sqlite")], capfd, monkeypatch)
    assert expected in line, line


def test_unknown_scale_and_missing_file(tmp_path, tiny_teacher, glue_dir, capfd, monkeypatch):
    path = tiny_suite(tmp_path, tiny_teacher, glue_dir)
    line = one_error_line(["suite", str(path), "--scale", "gpu"], capfd, monkeypatch)
    assert "no scale 'gpu'" in line and "cpu, paper" in line
    line = one_error_line(["suite", str(tmp_path / "nope.yaml")], capfd, monkeypatch)
    assert "cannot read suite" in line and "nope.yaml" in line


@pytest.mark.parametrize("name", ["p002-table1", "p002-table3", "ted-table2"])
def test_shipped_suites_load(name):
    for scale in ("cpu", "paper"):
        suite = load_suite(REPO / "benchmarks" / f"{name}.yaml", scale)
        configs = suite.configs()
        assert len(configs) == len(suite.tasks) * len(suite.entries) * len(suite.inits) * len(suite.teachers)
        assert all(not c.baseline and c.seed_values() == suite.seeds for c in configs)
    cpu = load_suite(REPO / "benchmarks" / f"{name}.yaml", "cpu")
    # the cpu scale where students learn (issue 16): the QNLI-dev split, 2,000 examples, 2 + 2 epochs
    assert cpu.teachers == ["mpnet-base"] and cpu.tasks == ["qnli-devsplit"]
    assert all((c.max_train_examples, c.epochs, c.teacher_epochs) == (2000, 2.0, 2.0) for c in cpu.configs())
    paper = load_suite(REPO / "benchmarks" / f"{name}.yaml", "paper")
    assert paper.teachers != ["mpnet-base"] and all(c.epochs == 10 and c.max_train_examples is None
                                                     for c in paper.configs())


def test_ted_suite_holds_table6_ablations_as_ted_cells_with_their_own_options():
    suite = load_suite(REPO / "benchmarks" / "ted-table2.yaml", "cpu")
    assert suite.objectives == ["none", "kd", "lwd", "ted"]
    filters = [(c.objective, c.ted_teacher_filters, c.ted_student_filters, c.beta) for c in suite.configs()]
    assert filters == [("none", "trained", "copy", None), ("kd", "trained", "copy", None), ("lwd", "trained", "copy", None),
                       ("ted", "trained", "copy", None), ("ted", "trained", "copy", 1.0), ("ted", "trained", "random", 1.0),
                       ("ted", "random", "copy", 1.0), ("ted", "none", "copy", 1.0)]  # the ablations at beta 1: see the YAML
    assert [label for label, _ in suite.cells()][5] == \
        "qnli-devsplit/ted [beta=1.0, ted_student_filters=random]/first-k/mpnet-base"
    table6 = load_suite(REPO / "benchmarks" / "ted-table2.yaml", "paper-table6")
    assert table6.tasks == ["mnli", "sst2", "rte"] and len(table6.configs()) == 15
    # paper 001 Table 6's rows, in order: TED, Abl.1 (no W_s), Abl.2 (no W_t, W_s random), Abl.3, Abl.4 (no W_t, W_s trained)
    assert [(c.ted_teacher_filters, c.ted_student_filters) for c in table6.configs()][:5] == [
        ("trained", "copy"), ("trained", "none"), ("none", "random"), ("trained", "random"), ("none", "train")]
    assert all(c.epochs == 10 and c.student_layers == 6 and c.layer_map == "ted" for c in table6.configs())


def test_objective_entry_options_beat_the_command_line(tmp_path, tiny_teacher, glue_dir):
    path = tiny_suite(tmp_path, tiny_teacher, glue_dir, objectives=["kd", {"kd": {"temperature": 4}}])
    suite = load_suite(path, overrides={"temperature": 2.0})
    assert [c.temperature for c in suite.configs()] == [2.0, 4.0]


def test_autoskd_suite_gives_its_team_to_multi_teacher_cells_only():
    for scale, first in (("cpu", "mpnet-base"), ("paper", "google-bert/bert-large-uncased")):
        suite = load_suite(REPO / "benchmarks" / "autoskd.yaml", scale)
        configs = suite.configs()
        assert len(configs) == len(suite.tasks) * len(suite.entries) == len(suite.tasks) * 6  # autoskd twice: SSWO, CR
        for c in configs:
            if c.objective in ("autoskd", "skd", "avgkd"):
                assert c.teachers.split(",")[0] == first and len(c.teachers.split(",")) == 3
            else:
                assert c.teachers is None  # kd and none learn from the grid's teacher alone
    cpu = load_suite(REPO / "benchmarks" / "autoskd.yaml", "cpu")
    assert {c.objective: c.theta_init for c in cpu.configs()}["skd"] == "random"
    # the scale of p002-table1/-table3 and ted-table2 (their teacher and their none and kd runs are shared)
    assert cpu.tasks == ["qnli-devsplit"] and all(c.candidates == 2 and c.max_train_examples == 2000 and c.epochs == 2
                                                  and c.teacher_epochs == 2 and c.theta_lr == 1e-3 for c in cpu.configs())
    assert [c.theta_update for c in cpu.configs() if c.objective == "autoskd"] == ["sswo", "cr"]
    mrpc = load_suite(REPO / "benchmarks" / "autoskd.yaml", "cpu-mrpc")  # the first cpu run's settings
    assert mrpc.tasks == ["mrpc"] and len(mrpc.configs()) == 5 and all(c.max_train_examples == 1000 for c in mrpc.configs())


def test_table1_and_table3_share_the_every_k_runs():
    """Same settings: the layers:4,8,12 cells of Table 3 are Table 1's every-k runs (the store skips them)."""
    t1 = {(c.task, c.objective): c for c in load_suite(REPO / "benchmarks" / "p002-table1.yaml").configs()}
    t3 = [c for c in load_suite(REPO / "benchmarks" / "p002-table3.yaml").configs() if c.init == "layers:4,8,12"]
    assert len(t3) == 4  # kd, hid-cls, att-kl, att-mse on qnli-devsplit
    for c in t3:
        other = t1[(c.task, c.objective)]
        assert {**vars(other), "init": c.init} == vars(c)


# --------------------------------------------------------------------------- the grid (fake runner, no training)


def test_grid_order_precedence_and_report(tmp_path, tiny_teacher, glue_dir, monkeypatch, capsys):
    kd = OBJECTIVES.get("kd")
    dummy = type("DummyKD", (kd,), {"name": "dummy-kd", "version": "0.1"})
    monkeypatch.setitem(OBJECTIVES._entries, "dummy-kd", dummy)  # an objective registered by a plug-in
    seen = []

    class FakeRunner:
        held = []  # no run held by another worker sharing the store

        def __init__(self, cfg, console=None):
            seen.append(cfg)
            self.cfg = cfg

        def run(self, wait=True):
            c = self.cfg
            bonus = {"none": 0.0, "kd": 0.02, "dummy-kd": 0.03}[c.objective]
            return [{"run_key": f"{c.task}-{c.objective}-{c.init}-{s}", "kind": "student", "task": c.task,
                     "objective": c.objective, "init": "layers:1,2,3", "teacher": "tiny", "student": "tiny[1,2,3]",
                     "seed": s, "config_hash": f"{c.task}-{c.objective}", "score": 0.6 + bonus + 0.01 * s * s,
                     "teacher_score": 0.7, "params": {"objective": c.objective, "task": c.task, "seed": s,
                                                      "hparams": {"epochs": c.epochs}}}
                    for s in c.seed_values()]

    monkeypatch.setattr(families, "make_runner", FakeRunner)
    monkeypatch.setattr(runner_mod, "train", no_training)
    path = tiny_suite(tmp_path, tiny_teacher, glue_dir, tasks=["rte", "wnli"], objectives=["kd", "none", "dummy-kd"],
                      seeds=3, task_settings={"wnli": {"epochs": 4, "lr": 1e-4}},
                      scales={"cpu": {"epochs": 2, "lr": 3e-5, "task_settings": {"wnli": {"lr": 2e-4}}}})
    out = tmp_path / "report"
    argv = ["suite", str(path), "--results", str(tmp_path / "r.sqlite"), "--out", str(out), "--lr", "7e-5"]
    assert main(argv) == 0
    assert [(c.task, c.objective) for c in seen] == [(t, o) for t in ("rte", "wnli") for o in ("kd", "none", "dummy-kd")]
    for c in seen:
        assert c.seed_values() == [0, 1, 2] and c.baseline is False and c.init == "first-k"
        assert c.teacher == str(tiny_teacher) and c.max_train_examples == 48
        assert c.lr == 7e-5  # the command line beats the scale and task_settings
        assert c.epochs == (4.0 if c.task == "wnli" else 2.0)  # task_settings beat the scale's options
        assert c.results == str(tmp_path / "r.sqlite")
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# tiny (cpu scale): tiny test suite\n")
    assert f"Command: `distilbench suite {path} --results {tmp_path / 'r.sqlite'} --out {out} --lr 7e-5`" in readme
    cells = read_csv(out / "cells.csv")
    assert [(c["task"], c["objective"]) for c in cells] == [(t, o) for t in ("rte", "wnli")
                                                           for o in ("dummy-kd", "kd", "none")]
    # the suite's order of objectives (kd, none, dummy-kd) is the order of the table rows
    table = readme.split("## 1. Objectives × tasks")[1].split("## 2.")[0]
    assert table.index("| kd |") < table.index("| none |") < table.index("| dummy-kd |")


# --------------------------------------------------------------------------- a real interrupted suite


def test_interrupted_suite_resumes_without_retraining(tmp_path, tiny_teacher, glue_dir, monkeypatch):
    path = tiny_suite(tmp_path, tiny_teacher, glue_dir)
    results = tmp_path / "results.sqlite"
    out = tmp_path / "report"
    with ResultsStore(results) as store:  # a run of another experiment in the same store stays out of the report
        store.put({"run_key": "other", "kind": "student", "task": "mrpc", "objective": "kd", "init": "layers:1,2,3",
                   "teacher": "elsewhere", "student": "x", "seed": 0, "config_hash": "other", "score": 0.5})
    argv = ["suite", str(path), "--results", str(results), "--out", str(out)]
    real_run_one = runner_mod.Runner.run_one
    calls: list[tuple[str, int]] = []

    def interrupt_on_third(self, objective_cls, seed, *args, **kwargs):
        if len(calls) == 2:  # cell 1 (none, seeds 0 and 1) is stored; cell 2 is interrupted on its first seed
            raise KeyboardInterrupt
        calls.append((objective_cls.name, seed))
        return real_run_one(self, objective_cls, seed, *args, **kwargs)

    monkeypatch.setattr(runner_mod.Runner, "run_one", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    with ResultsStore(results) as store:
        before = {(r["objective"], r["seed"]): r for r in store.rows() if r["run_key"] != "other"}
    assert sorted(before) == [("none", 0), ("none", 1)]
    assert not out.exists()  # the report is written once the grid is done

    resumed: list[tuple[str, int]] = []

    def count(self, objective_cls, seed, *args, **kwargs):
        resumed.append((objective_cls.name, seed))
        return real_run_one(self, objective_cls, seed, *args, **kwargs)

    monkeypatch.setattr(runner_mod.Runner, "run_one", count)
    assert main(argv) == 0
    assert resumed == [("kd", 0), ("kd", 1)]  # only what was missing
    with ResultsStore(results) as store:
        after = {(r["objective"], r["seed"]): r for r in store.rows() if r["run_key"] != "other"}
    assert sorted(after) == [("kd", 0), ("kd", 1), ("none", 0), ("none", 1)]
    for key, row in before.items():
        assert after[key] == row  # kept as it was, not retrained
    cells = read_csv(out / "cells.csv")
    assert [(c["task"], c["objective"], c["n"]) for c in cells] == [("rte", "kd", "2"), ("rte", "none", "2")]
    comparisons = read_csv(out / "comparisons.csv")
    assert [(c["a"], c["b"], c["n"], c["mismatched"]) for c in comparisons] == [("none", "kd", "2", "false")]
    first = (out / "README.md").read_text(encoding="utf-8")
    first_csv = [(out / name).read_bytes() for name in ("cells.csv", "comparisons.csv", "scores-rte.png")]

    # a third time: nothing to train, and the same report (except its Date line)
    resumed.clear()
    assert main(argv) == 0
    assert resumed == []
    second = (out / "README.md").read_text(encoding="utf-8")
    drop = lambda text: [line for line in text.splitlines() if not line.startswith("Date:")]  # noqa: E731
    assert drop(first) == drop(second)
    assert [(out / name).read_bytes() for name in ("cells.csv", "comparisons.csv", "scores-rte.png")] == first_csv

"""A task's own run defaults (``defaults:`` in its registry file): between the harness's defaults and the user's.

`distilbench run --objective ted --task wikitext2 --seeds 2` (issue 21's command) names no teacher: the causal-LM task
supplies its from-scratch teacher and the learning rates that train one, and says so in one line."""
from __future__ import annotations

import pytest

from distilbench.config import RunConfig, build_config, task_defaults
from distilbench.data.tasks import task_run_defaults

SCRATCH = "scratch:n_layer=4,n_embd=128,n_head=4"


def test_wikitext2_names_its_from_scratch_teacher_and_a_flag_or_the_yaml_overrides_each_value(tmp_path):
    cfg = build_config({"task": "wikitext2", "objective": "ted"}, None, task_run_defaults)
    assert (cfg.teacher, cfg.teacher_lr, cfg.lr, cfg.layer_map, cfg.student_layers) == (SCRATCH, 1e-3, 1e-3, "ted", 2)
    assert cfg.teacher_epochs == 5.0 and cfg.teacher_micro_batch == 0
    flagged = build_config({"task": "wikitext2", "teacher": "scratch:gpt2-tiny", "lr": 2e-3}, None, task_run_defaults)
    assert (flagged.teacher, flagged.lr, flagged.teacher_lr) == ("scratch:gpt2-tiny", 2e-3, 1e-3)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("lr: 4.0e-4\nstudent_layers: 1\n")
    from_yaml = build_config({"task": "wikitext2"}, str(yaml_path), task_run_defaults)
    assert (from_yaml.lr, from_yaml.student_layers, from_yaml.teacher) == (4e-4, 1, SCRATCH)
    # the same task by its alias-free upper-case name, and a GLUE task, which declares none
    assert build_config({"task": "WikiText2"}, None, task_run_defaults).teacher == SCRATCH
    rte = build_config({"task": "rte"}, None, task_run_defaults)
    assert task_run_defaults("rte") == {} and (rte.teacher, rte.lr) == (RunConfig.teacher, RunConfig.lr)


def test_a_task_file_with_an_unknown_or_malformed_default_is_refused_naming_the_file():
    assert task_defaults({"teacher-lr": "1e-3", "epochs": 2}, "x.yaml") == {"teacher_lr": 1e-3, "epochs": 2.0}
    assert task_defaults(None, "x.yaml") == {}
    with pytest.raises(ValueError, match=r"x\.yaml.*unknown option 'tacher'"):
        task_defaults({"tacher": "mpnet-base"}, "x.yaml")
    with pytest.raises(ValueError, match=r"x\.yaml.*unknown option 'seeds'"):  # what a run is, not how it trains
        task_defaults({"seeds": 4}, "x.yaml")
    with pytest.raises(ValueError, match=r"x\.yaml"):
        task_defaults({"lr": "fast"}, "x.yaml")
    with pytest.raises(ValueError, match="mapping"):
        task_defaults(["lr"], "x.yaml")


def test_run_prints_which_values_came_from_the_task_and_writes_nothing_on_bad_input(tmp_path, capfd):
    from distilbench.cli import main

    code = main(["run", "--objective", "ted", "--task", "wikitext2", "--seeds", "2", "--lr", "2e-3",
                 "--data-dir", str(tmp_path / "missing"), "--results", str(tmp_path / "r.sqlite")])
    out, err = capfd.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err
    line = next(x for x in out.splitlines() if "own defaults" in x)
    assert f"--teacher {SCRATCH}" in line and "--layer-map ted" in line
    assert "--lr " not in line  # given on the command line: not the task's
    assert not (tmp_path / "r.sqlite").exists()


def test_a_suite_cell_takes_the_task_defaults_under_its_own_settings(tmp_path):
    from distilbench.suite import load_suite

    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\ntasks: [wikitext2]\nobjectives: [kd]\ninits: [first-k]\nteachers: ['{SCRATCH}']\n"
                    "seeds: [0]\nsettings:\n  lr: 5.0e-4\n")
    (cfg,) = load_suite(path, "cpu").configs()
    assert (cfg.lr, cfg.teacher_lr, cfg.layer_map) == (5e-4, 1e-3, "ted")


@pytest.mark.parametrize("task, folder, alternative", [("squad", "squad-v1.1", "squad-devsplit"),
                                                       ("qnli", "QNLI", "qnli-devsplit")])
def test_a_missing_train_split_names_the_task_carved_from_the_files_that_exist(tmp_path, capfd, task, folder,
                                                                               alternative):
    """Issue 20's `run --task squad` offline: one line naming --task squad-devsplit, never a silent substitution."""
    from distilbench.cli import main

    (tmp_path / "data" / folder).mkdir(parents=True)
    code = main(["run", "--task", task, "--data-dir", str(tmp_path / "data"), "--results", str(tmp_path / "r.sqlite")])
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "does not exist" in err and f"--task {alternative} is carved out" in err
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize("task, folder, files, alternative", [
    ("squad", "squad-v1.1", {"dev-v1.1.json": '{"version": "1.1", "data": []}'}, "squad-devsplit"),
    ("qnli", "QNLI", {"dev.tsv": "index\tquestion\tsentence\tlabel\n"}, "qnli-devsplit")])
def test_offline_the_task_runs_on_its_split_of_the_files_that_are_here_and_says_so(tmp_path, capfd, monkeypatch, task,
                                                                                  folder, files, alternative):
    """Issue 20's done-when: `run --task squad` offline (only SQuAD's dev file here) runs squad-devsplit, with one line
    saying so and that its numbers are not comparable; with its own files present the task runs as named."""
    from distilbench.cli import main
    from distilbench.training import families

    (tmp_path / "data" / folder).mkdir(parents=True)
    for name, text in files.items():
        (tmp_path / "data" / folder / name).write_text(text)
    seen = []

    class Stop:  # the runner the command builds: records its config, trains nothing
        def __init__(self, cfg):
            seen.append(cfg)
            raise SystemExit(0)

    monkeypatch.setattr(families, "make_runner", Stop)
    args = ["run", "--task", task, "--data-dir", str(tmp_path / "data"), "--results", str(tmp_path / "r.sqlite")]
    with pytest.raises(SystemExit):
        main(args)
    assert seen[-1].task == alternative
    (line,) = [x for x in capfd.readouterr().err.splitlines() if x.strip()]
    assert line.startswith(f"{task}: ") and f"runs --task {alternative}" in line and "not comparable" in line.lower()
    for name in ("train.tsv", "train-v1.1.json"):  # its own training file present: no stand-in
        (tmp_path / "data" / folder / name).write_text(next(iter(files.values())))
    with pytest.raises(SystemExit):
        main(args)
    assert seen[-1].task == task and "runs --task" not in capfd.readouterr().err


def test_the_teacher_command_takes_only_the_teachers_defaults(tmp_path, capfd, monkeypatch):
    """`distilbench teacher --task wikitext2 --init random --teacher-config gpt2-tiny` (2 layers) must not inherit the
    task's student options (2 student layers by TED's map need a teacher of 4 layers)."""
    from distilbench.cli import main
    from distilbench.training import families

    seen = {}

    class Stop:  # the runner the command builds: records its config, trains nothing
        def __init__(self, cfg):
            seen["cfg"] = cfg

        def teacher(self):
            raise SystemExit(0)

    monkeypatch.setattr(families, "make_runner", Stop)
    with pytest.raises(SystemExit):
        main(["teacher", "--task", "wikitext2", "--init", "random", "--teacher-config", "gpt2-tiny",
              "--data-dir", str(tmp_path), "--results", str(tmp_path / "r.sqlite")])
    cfg = seen["cfg"]
    assert (cfg.teacher, cfg.teacher_lr, cfg.teacher_epochs) == ("scratch:gpt2-tiny", 1e-3, 5.0)
    assert (cfg.layer_map, cfg.lr) == (RunConfig.layer_map, RunConfig.lr)  # a student's options: not taken
    out = capfd.readouterr().out
    assert "--teacher-lr 0.001" in out and "--layer-map" not in out and "--teacher scratch:n_layer" not in out


def test_search_takes_the_task_defaults_too_and_every_command_says_which_it_took(tmp_path, capsys):
    """`search` builds its trials' config through the same merge as `run` (it once skipped the task's defaults: a
    wikitext2 study fell back to the mpnet-base teacher); a value given on the command line or in --config is not
    reported as taken from the task."""
    from distilbench.cli.flags import config_from
    from distilbench.config import merge_options

    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("epochs: 1\n")
    values, taken = merge_options({"task": "wikitext2", "lr": 2e-3}, str(yaml_path), task_run_defaults)
    assert (values["lr"], values["epochs"], values["teacher"]) == (2e-3, 1, SCRATCH)
    assert set(taken) == {"teacher", "teacher_epochs", "teacher_lr", "teacher_micro_batch", "student_layers", "layer_map"}
    cfg, given = config_from({"task": "wikitext2", "objective": "kd"}, None)
    assert (cfg.teacher, cfg.lr) == (SCRATCH, 1e-3) and given == {"task", "objective"}
    line = capsys.readouterr().out.strip()
    assert line.startswith("task wikitext2's own defaults (registry/tasks/wikitext2.yaml") and f"--teacher {SCRATCH}" in line
    teacher_only, _ = config_from({"task": "wikitext2"}, None, ("teacher", "teacher_lr"))
    assert (teacher_only.teacher, teacher_only.teacher_lr, teacher_only.lr) == (SCRATCH, 1e-3, RunConfig.lr)
    assert capsys.readouterr().out.strip().endswith(f"--teacher {SCRATCH}, --teacher-lr 0.001")  # only those two
    config_from({"task": "rte"}, None)
    assert capsys.readouterr().out == ""  # a task without defaults: nothing to say

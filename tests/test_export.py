"""--save-students and `distilbench export`: a saved student is a plain transformers folder that predicts the run's
stored dev labels, its card says what produced it, saving leaves the run identity alone, and export refuses in one line.

A tiny 4-layer hidden-32 BERT on a 48-example slice of real RTE (tests/conftest.py), one run trained per module
fixture and shared by the tests that only read it.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

import distilbench.training.runs.runner as runner_mod
from conftest import no_training
from distilbench.results.chance import check_rows
from distilbench.cli import main
from distilbench.data.batching import encode
from distilbench.models.loading import load_tokenizer
from distilbench.results.store import ResultsStore
from distilbench.data.tasks import get_task, load_split


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _args(teacher: Path, glue: Path, results: Path) -> list[str]:
    return ["--teacher", str(teacher), "--task", "rte", "--data-dir", str(glue), "--max-train-examples", "48",
            "--max-eval-examples", "24", "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "8",
            "--results", str(results), "--no-progress", "--objective", "kd", "--no-baseline"]


def _rows(results: Path) -> list[dict]:
    with ResultsStore(results) as store:
        return store.rows()


@pytest.fixture(scope="module")
def saved(tiny_teacher, glue_dir, tmp_path_factory):
    """One kd run (seed 0) saved under ROOT: (its args, results path, row, ROOT, the weights of the model that made
    the stored dev predictions). A tiny student on 48 examples tends to predict one class for every dev example, so
    equal labels alone could not tell the trained student from its init: the weights are compared too."""
    base = tmp_path_factory.mktemp("saved")
    args = _args(tiny_teacher, glue_dir, base / "results.sqlite")
    root = base / "students"
    weights: dict[str, torch.Tensor] = {}
    real_predict = runner_mod.predict

    def spy(model, *rest):
        weights.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_predict(model, *rest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_mod, "predict", spy)
        assert main(["run", *args, "--save-students", str(root)]) == 0
    (row,) = _rows(base / "results.sqlite")
    assert weights
    return args, base / "results.sqlite", row, root, weights


@pytest.fixture(scope="module")
def unsaved(tiny_teacher, glue_dir, tmp_path_factory):
    """The same run without --save-students, in a results store of its own: (its args, results path, row)."""
    base = tmp_path_factory.mktemp("unsaved")
    args = _args(tiny_teacher, glue_dir, base / "results.sqlite")
    assert main(["run", *args]) == 0
    (row,) = _rows(base / "results.sqlite")
    return args, base / "results.sqlite", row


def _predict(folder: Path, glue_dir: Path, n: int) -> list[int]:
    """Dev predictions of a saved folder through transformers alone (no distilbench code)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    dev = load_split(get_task("rte"), "dev", glue_dir)[:n]
    out = []
    with torch.no_grad():
        for k in range(0, n, 8):
            chunk = dev[k:k + 8]
            enc = tokenizer([e.text_a for e in chunk], [e.text_b for e in chunk], truncation=True, padding=True, return_tensors="pt")
            out += model(**enc).logits.argmax(-1).tolist()
    return out


def _one_error_line(capfd) -> str:
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("distilbench: error: "), err
    return err


# --------------------------------------------------------------------------- the saved folder


def test_saved_folder_loads_offline_and_predicts_the_stored_labels(saved, glue_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, _, row, root, weights = saved
    folder = Path(row["extra"]["saved_student"])
    assert folder == (root / "rte" / "kd" / "layers_1,2,3" / f"seed0-{row['run_key']}").resolve()
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "README.md", "distilbench.json"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert config["label2id"] == {"entailment": 0, "not_entailment": 1}
    assert config["num_hidden_layers"] == 3  # the student, not the 4-layer teacher
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 128
    preds = _predict(folder, glue_dir, 24)
    assert preds == row["extra"]["dev_predictions"]
    # the very weights that predicted the stored labels, and the tokens the run read
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    stored = load_file(folder / "model.safetensors")
    assert set(stored) <= set(weights) and "classifier.weight" in stored
    assert all(torch.equal(stored[k], weights[k]) for k in stored), [k for k in stored if not torch.equal(stored[k], weights[k])]
    from distilbench.models.loading import cache_dir

    (teacher,) = (cache_dir() / "teachers").glob(f"rte-*-{row['extra']['teacher_key']}")
    init = load_file(teacher / "model.safetensors")  # the student started from these (layers 1-3, embeddings, head)
    assert not torch.equal(stored["classifier.weight"], init["classifier.weight"])  # saved after training, not before
    dev = load_split(get_task("rte"), "dev", glue_dir)[:24]
    ours = encode(load_tokenizer(str(row["teacher"])), dev, 128).input_ids
    theirs = AutoTokenizer.from_pretrained(folder)([e.text_a for e in dev], [e.text_b for e in dev], truncation=True)["input_ids"]
    assert [list(x) for x in ours] == theirs and max(map(len, theirs)) == 128  # some were cut, at the same place


def test_model_card_and_json_say_what_produced_the_student(saved, tiny_teacher):
    _, _, row, root, _ = saved
    folder = Path(row["extra"]["saved_student"])
    meta = json.loads((folder / "distilbench.json").read_text())
    card = (folder / "README.md").read_text()
    check = check_rows([row])  # one seed: the bootstrap over dev examples alone decides
    verdict = "at chance" if check.at_chance else "above chance"
    assert check.at_chance is not None and check.seed_p != check.seed_p  # nan: no seed-level test for one run
    assert meta["run_key"] == row["run_key"] and meta["config_hash"] == row["config_hash"]
    assert meta["objective"] == "kd" and meta["objective_params"] == row["params"]["objective_params"]
    assert meta["objective_params"]["temperature"] == 2.0
    assert meta["teacher"] == str(tiny_teacher) and meta["teacher_key"] == row["extra"]["teacher_key"]
    assert meta["init"] == "layers:1,2,3" and meta["layer_map"] == "init"
    assert meta["init_mapping"] == [f"student layer {k} <- teacher layer {k}" for k in (1, 2, 3)]
    assert meta["dev"]["score"] == row["score"] and meta["dev"]["examples"] == 24
    assert meta["signal_check"]["verdict"] == verdict
    assert meta["signal_check"]["p"] == pytest.approx(check.example_p, abs=1e-6)
    assert meta["signal_check"]["majority"] == pytest.approx(check.majority, abs=1e-4)
    assert "bootstrap" in meta["signal_check"]["test"]
    assert meta["provenance"]["git_rev"] == row["git_rev"] and meta["provenance"]["versions"] == row["versions"]
    assert meta["saved_student"] == str(folder)
    assert shlex.split(meta["command"])[:2] == ["distilbench", "run"]
    assert shlex.split(meta["command"])[-2:] == ["--save-students", str(root.resolve())]
    for text in (meta["command"], "`kd`", str(tiny_teacher), "layers:1,2,3", "student layer 3 <- teacher layer 3",
                 f"accuracy (main) | {100 * row['score']:.2f} | {100 * row['teacher_score']:.2f}",
                 f"Signal check: {verdict}", "bootstrap", row["run_key"], row["git_rev"], "temperature=2.0"):
        assert text in card, text


def test_card_command_is_the_same_run(saved, glue_dir, monkeypatch):
    """The card's command, given the data folder and the results store, is the stored run: it trains nothing."""
    _, results, row, _, _ = saved
    monkeypatch.setattr(runner_mod, "train", no_training)
    command = shlex.split(json.loads((Path(row["extra"]["saved_student"]) / "distilbench.json").read_text())["command"])
    assert main([*command[1:], "--data-dir", str(glue_dir), "--results", str(results), "--no-progress"]) == 0
    assert _rows(results) == [row]


def test_saving_leaves_the_run_identity_alone(saved, unsaved):
    _, _, row, _, _ = saved
    _, _, plain = unsaved
    assert plain["run_key"] == row["run_key"] and plain["config_hash"] == row["config_hash"]
    assert plain["params"] == row["params"]
    assert plain["extra"]["settings"] == row["extra"]["settings"]  # not a measured setting: titles do not name it
    assert "save_students" not in row["extra"]["settings"]
    assert "saved_student" not in plain["extra"]
    assert plain["extra"]["dev_predictions"] == row["extra"]["dev_predictions"]


def test_a_stored_unsaved_run_is_named_not_retrained(unsaved, tmp_path, capfd, monkeypatch):
    args, results, row = unsaved
    monkeypatch.setattr(runner_mod, "train", no_training)
    assert main(["run", *args, "--save-students", str(tmp_path / "students")]) == 0
    err = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert f"1 stored run(s) were not retrained, so their students are not saved ({row['run_key']}): add --force" in err
    assert not (tmp_path / "students").exists()


# --------------------------------------------------------------------------- export


def test_export_copies_the_saved_student_with_its_card(saved, glue_dir, tmp_path, capsys):
    _, results, row, _, _ = saved
    folder = Path(row["extra"]["saved_student"])
    card = (folder / "README.md").read_text()
    out = tmp_path / "exported"
    assert main(["export", "--results", str(results), "--run-key", row["run_key"], "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert (out / "README.md").read_text() == card  # the card is a function of the row: rewritten the same
    assert _predict(out, glue_dir, 24) == row["extra"]["dev_predictions"]
    # without --out: the card is rewritten where the run saved the student
    (folder / "README.md").write_text("stale")
    assert main(["export", "--results", str(results), "--run-key", row["run_key"]]) == 0
    assert capsys.readouterr().out.strip() == str(folder)
    assert (folder / "README.md").read_text() == card
    # an --out that holds something is refused
    assert main(["export", "--results", str(results), "--run-key", row["run_key"], "--out", str(out)]) == 2


def test_export_of_an_unsaved_run_is_one_line_and_writes_nothing(unsaved, tmp_path, capfd):
    _, results, row = unsaved
    out = tmp_path / "exported"
    assert main(["export", "--results", str(results), "--run-key", row["run_key"], "--out", str(out)]) == 2
    err = _one_error_line(capfd)
    assert f"run {row['run_key']} was not saved" in err and "--save-students DIR" in err and "--force" in err
    assert not out.exists()


def test_export_of_an_unknown_key_suggests_the_stored_one(saved, tmp_path, capfd):
    _, results, row, _, _ = saved
    typo = row["run_key"][:-1] + ("0" if row["run_key"][-1] != "0" else "1")
    out = tmp_path / "exported"
    assert main(["export", "--results", str(results), "--run-key", typo, "--out", str(out)]) == 2
    err = _one_error_line(capfd)
    assert f"no run {typo!r}" in err and f"Did you mean {row['run_key']!r}?" in err
    assert main(["export", "--results", str(results), "--run-key", "zzz"]) == 2
    assert "It holds 1 run(s)." in _one_error_line(capfd)
    assert main(["export", "--results", str(tmp_path / "none.sqlite"), "--run-key", row["run_key"]]) == 2
    assert "no results file" in _one_error_line(capfd)
    assert not out.exists() and not (tmp_path / "none.sqlite").exists()


# --------------------------------------------------------------------------- bad input


def test_save_students_on_a_file_is_refused_before_anything_is_written(tiny_teacher, glue_dir, tmp_path, capfd):
    target = tmp_path / "a-file"
    target.write_text("x")
    results = tmp_path / "results.sqlite"
    assert main(["run", *_args(tiny_teacher, glue_dir, results), "--save-students", str(target)]) == 2
    assert "--save-students" in _one_error_line(capfd) and not results.exists()
    assert main(["search", *_args(tiny_teacher, glue_dir, results), "--save-students", str(tmp_path / "s")]) == 2
    assert "a search keeps no student" in _one_error_line(capfd) and not results.exists()


def test_suite_settings_and_workers_save_every_student(tiny_teacher, glue_dir, tmp_path, capfd):
    """A suite takes save_students in its settings, and runs in spawned workers save their own students."""
    root = tmp_path / "students"
    suite = tmp_path / "mini.yaml"
    suite.write_text(f"name: mini\ntasks: [rte]\nobjectives: [kd]\ninits: [first-k]\nteachers: [{tiny_teacher}]\nseeds: 2\n"
                     f"settings: {{save_students: {root}, max_train_examples: 48, max_eval_examples: 24, epochs: 1, "
                     f"teacher_epochs: 1, batch_size: 8}}\nscales: {{cpu: {{}}}}\n")
    results = tmp_path / "results.sqlite"
    assert main(["suite", str(suite), "--data-dir", str(glue_dir), "--results", str(results), "--no-progress",
                 "--workers", "2", "--out", str(tmp_path / "report")]) == 0
    assert "2 run(s) in 2 worker process(es)" in capfd.readouterr().err  # saved in the spawned workers, not here
    rows = _rows(results)
    assert sorted(r["seed"] for r in rows) == [0, 1]
    for r in rows:
        folder = Path(r["extra"]["saved_student"])
        assert folder.parent == (root / "rte" / "kd" / "layers_1,2,3").resolve()
        assert _predict(folder, glue_dir, 24) == r["extra"]["dev_predictions"]

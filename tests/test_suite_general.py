"""A suite's general students (`pretrain:`): distilled once before the cells, fine-tuned by the cells whose init is
`general:NAME`, never distilled again on a rerun; `--pretrain-only` stops before the cells; bad blocks are one line."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import no_training
from distilbench.cli import main
from distilbench.results.store import ResultsStore
from distilbench.training.families import general

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _suite(tmp_path: Path, tiny_teacher: Path, glue_dir: Path, **over) -> Path:
    text = tmp_path / "text.txt"
    rng = np.random.RandomState(0)
    words = "the cat sat on a mat dog ran far away big small".split()
    text.write_text("\n".join(" ".join(rng.choice(words, rng.randint(3, 12))) for _ in range(800)) + "\n")
    spec = {"name": "general-tiny", "tasks": ["rte"], "objectives": ["none"], "inits": ["general:a", "general:b"],
            "teachers": [str(tiny_teacher)], "seeds": [0],
            "settings": {"max_train_examples": 48, "max_eval_examples": 24, "epochs": 1, "teacher_epochs": 1,
                         "batch_size": 8, "progress": False, "data_dir": str(glue_dir)},
            "pretrain": {"out": str(tmp_path / "students"), "corpus": str(text), "steps": 3,
                         "settings": {"teacher": str(tiny_teacher), "student_layers": 2, "max_length": 24, "batch_size": 8,
                                      "mixed_precision": "no"},
                         "students": {"a": {"objective": "att-mse", "init": "random"},
                                      "b": {"objective": "hid-seq", "init": "first-k"}}}}
    spec.update(over)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_general_students_are_distilled_once_then_fine_tuned(tmp_path, tiny_teacher, glue_dir, capfd):
    claim = {"id": "a-b", "paper": "p", "claim": "a beats b", "better": {"label": "none", "init": "general:a"},
             "worse": {"label": "none", "init": "general:b"}, "distillation": False}
    path = _suite(tmp_path, tiny_teacher, glue_dir, claims=[claim])
    results = tmp_path / "r.sqlite"
    argv = ["suite", str(path), "--results", str(results), "--out", str(tmp_path / "report")]
    assert main([*argv, "--pretrain-only"]) == 0
    students = tmp_path / "students"
    assert sorted(p.name for p in students.iterdir() if not p.name.startswith(".")) == ["a", "b"]
    with ResultsStore(results) as db:
        assert db.rows() == []  # no cell ran
    keys = {n: json.loads((students / n / general.META).read_text())["key"] for n in ("a", "b")}
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert err.count("nothing to do") == 2  # the students were not distilled again
    with ResultsStore(results) as db:
        rows = db.rows()
    assert sorted(r["init"] for r in rows) == [f"pretrained:{(students / n).as_posix()}" for n in ("a", "b")]
    assert {n: json.loads((students / n / general.META).read_text())["key"] for n in ("a", "b")} == keys
    assert main(argv) == 0  # a rerun trains nothing
    with ResultsStore(results) as db:
        assert len(db.rows()) == 2
    # the report command reads the suite's claims as the suite does: general:NAME is the cells' pretrained:OUT/NAME
    for out in (tmp_path / "report", tmp_path / "again"):
        if out.name == "again":
            assert main(["report", "--results", str(results), "--out", str(out), "--claims", str(path)]) == 0
        with open(out / "claims.csv", newline="") as fh:
            (row,) = list(csv.DictReader(fh))
        assert row["n"] == "1" and "no cell" not in row["reason"], row


@pytest.mark.parametrize("over, expected", [
    ({"inits": ["general:c"]}, "init general:c names no student of the pretrain block"),
    ({"pretrain": None}, "inits name general students (general:NAME) but the suite has no pretrain block"),
    ({"pretrain": {"students": {"a": {"objective": "att-mse"}}}}, "pretrain.students.a: missing init"),
    ({"pretrain": {"steps": 0, "students": {"a": {"objective": "att-mse", "init": "random"}}}}, "steps must be a count >= 1"),
    ({"pretrain": {"stepz": 3, "students": {"a": {"objective": "att-mse", "init": "random"}}}}, "unknown key(s) 'stepz'"),
    ({"inits": ["general:a"], "pretrain": {"students": {"a": {"objective": "kd", "init": "random"}}}},
     "student a: objective kd cannot distil without labels"),
    ({"pretrain": {"students": {"a": {"objective": "att-mse", "init": "random", "mixed_precision": "auto"}}},
      "inits": ["general:a"]}, "give mixed_precision (bf16, fp32 or no)"),
    ({"pretrain": {"students": {"a": {"objective": "att-mse", "init": "random", "epochs": 3}}}, "inits": ["general:a"]},
     "unknown option 'epochs'"),
    ({"pretrain": {"students": {"../a": {"objective": "att-mse", "init": "random"}}}}, "is not a folder name"),
    ({"pretrain": {"students": {"a": {"objective": "att-mse", "init": "random"}, "z": {"objective": "ted", "init": "random"}}},
      "inits": ["general:a"]}, "student z: objective ted cannot distil"),  # every student is checked, used or not
])
def test_bad_pretrain_blocks_are_one_line(over, expected, tmp_path, tiny_teacher, glue_dir, capfd, monkeypatch):
    import distilbench.training.runs.runner as runner_mod

    monkeypatch.setattr(runner_mod, "train", no_training)
    spec_over = dict(over)
    if "pretrain" in over and over["pretrain"] is not None:  # keep the teacher and folders of the default block
        base = yaml.safe_load(_suite(tmp_path, tiny_teacher, glue_dir).read_text())["pretrain"]
        spec_over["pretrain"] = {**{k: v for k, v in base.items() if k != "students"}, **over["pretrain"]}
    path = _suite(tmp_path, tiny_teacher, glue_dir, **spec_over)
    capfd.readouterr()
    assert main(["suite", str(path), "--results", str(tmp_path / "r.sqlite")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "r.sqlite").exists() and not (tmp_path / "students").exists()


def test_claims_name_general_students_and_cells_are_checked_as_the_student(tmp_path, tiny_teacher, glue_dir):
    from distilbench.suite import load_suite

    claim = {"id": "c", "paper": "002 Table 4", "claim": "a beats b", "better": {"label": "none", "init": "general:a"},
             "worse": {"label": "none", "init": "general:b"}}
    suite = load_suite(_suite(tmp_path, tiny_teacher, glue_dir, claims=[claim]))
    folder = (tmp_path / "students" / "a").as_posix()
    assert suite.claims[0]["better"]["init"] == f"pretrained:{folder}"
    assert [cfg.init for _, cfg in suite.cells()] == [f"pretrained:{folder}", f"pretrained:{folder[:-1]}b"]

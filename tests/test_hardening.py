"""Input that leaves nothing to train on or score, and unpickling: refused in one line before anything is written.

An empty split (a TSV with only its header) used to reach the tokenizer and end in an IndexError traceback, exit 1,
with an empty results file left behind. Every ``torch.load`` passes ``weights_only=True``: pyproject allows torch
>= 2.2, whose default unpickles arbitrary objects from a cache file.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import distilbench
import distilbench.training.runs.runner as runner_mod
from conftest import write_rte
from distilbench.cli import main

ROWS = [f"{i}\tA man walks a dog number {i}.\tA person is outside.\t{'entailment' if i % 2 else 'not_entailment'}"
        for i in range(6)]


@pytest.fixture
def refuse(tiny_teacher, tmp_path, capfd, monkeypatch):
    """Run ``distilbench run`` on a temp RTE folder expecting a refusal: exit 2, one error line, no results file and
    no cache folder (the cache points at a folder that must stay absent), and training never started."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DISTILBENCH_CACHE", str(cache))

    def no_training(*args, **kwargs):
        raise AssertionError("training started on input that should have been refused")

    monkeypatch.setattr(runner_mod, "train", no_training)

    def run(train_rows: list[str], dev_rows: list[str], *extra: str) -> str:
        data = write_rte(tmp_path / "glue", train_rows, dev_rows)
        results = tmp_path / "out" / "results.sqlite"
        capfd.readouterr()
        rc = main(["run", "--teacher", str(tiny_teacher), "--task", "rte", "--data-dir", str(data), "--epochs", "1",
                   "--teacher-epochs", "1", "--results", str(results), "--no-progress", *extra])
        _, err = capfd.readouterr()
        assert rc == 2, err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("distilbench: error: "), err
        assert not results.exists() and not results.parent.exists()
        assert not cache.exists(), sorted(str(p) for p in cache.rglob("*"))
        return lines[0]

    return run


def test_train_split_with_only_its_header(refuse):
    line = refuse([], ROWS)
    assert "RTE/train.tsv: no examples below the header" in line and "at least one row" in line


def test_dev_split_with_only_its_header(refuse):
    line = refuse(ROWS, [])
    assert "RTE/dev.tsv: no examples below the header" in line and "at least one row" in line


def test_max_eval_examples_zero(refuse):
    line = refuse(ROWS, ROWS, "--max-eval-examples", "0")
    assert "--max-eval-examples must be >= 1 (got 0)" in line


def test_max_train_examples_leavingno_training_part(refuse):
    # one example: the selection split holds it out, so the student would train on nothing
    line = refuse(ROWS, ROWS, "--max-train-examples", "1")
    assert "1 training example(s) leave none to train on" in line
    assert "--selection-fraction 0.1" in line and "at least 2" in line


def test_selection_fraction_leavingno_training_part(refuse):
    # 2 rows at a fraction of 0.9: round(1.8) = 2 held out, none left
    line = refuse(ROWS[:2], ROWS, "--selection-fraction", "0.9")
    assert "2 training example(s) leave none to train on" in line


def test_two_training_examples_are_enough_to_plan(tiny_teacher, tmp_path, monkeypatch):
    """The boundary of the check above: 2 examples at the default fraction leave 1 to train on."""
    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "cache"))
    from distilbench.config import build_config

    data = write_rte(tmp_path / "glue", ROWS, ROWS)
    plan = runner_mod.plan_run(build_config({"teacher": str(tiny_teacher), "data_dir": str(data), "max_train_examples": 2,
                                             "results": str(tmp_path / "r.sqlite")}), runner_mod.Runner)
    assert len(plan.train_all) == 2 and len(plan.dev) == 6
    plan.store.close()


def _torch_load_calls(source: str) -> list[ast.Call]:
    calls = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            calls.append(node)
    return calls


def _weights_only(call: ast.Call) -> bool:
    return any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


def test_every_torch_load_passes_weights_only():
    package = Path(distilbench.__file__).parent
    found, bad = 0, []
    for path in sorted(package.rglob("*.py")):
        for call in _torch_load_calls(path.read_text(encoding="utf-8")):
            found += 1
            if not _weights_only(call):
                bad.append(f"{path.relative_to(package.parent)}:{call.lineno}")
    assert found >= 3  # teacher logits, a shared stage, the best epoch's weights: the walk does see them
    assert bad == [], f"torch.load without weights_only=True: {bad}"


def test_the_check_catches_a_call_without_it():
    calls = _torch_load_calls("import torch\na = torch.load(p)\nb = torch.load(p, weights_only=False)\n"
                              "c = torch.load(\n    p,\n    weights_only=True,\n)\n")
    assert [_weights_only(c) for c in calls] == [False, False, True]

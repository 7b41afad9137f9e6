"""Adding an objective with one option is one new file: `tests/data/logit_mse.py` (the worked example of
docs/adding-an-objective.md) dropped into a copy of the package's objectives folder is listed, gets its flag under
`run --help`, is accepted as a YAML key, is checked against its bounds, enters each run's identity and the search
space, and computes its formula. Nothing else in the copy is edited."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "data" / "logit_mse.py"

PROBE = r"""
import json, sys, torch
from distilbench.cli import main
from distilbench.config import RunConfig, build_config, load_yaml
from distilbench.data.tasks import get_task
from distilbench.objectives import Context, Outputs, Stage, get_objective

cls = get_objective("logit-mse")
cfg = build_config({"objective": "logit-mse", "logit_mse_weight": 0.5})
yaml_cfg = build_config({"objective": "logit-mse"}, sys.argv[1])
try:
    build_config({"objective": "logit-mse", "logit_mse_weight": -1.0})
    refused = None
except ValueError as exc:
    refused = str(exc)
student, teacher = torch.tensor([[1.0, -1.0], [0.5, 0.0]], requires_grad=True), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
labels = torch.tensor([0, 1])
objective = cls(Context(task=get_task("rte"), config=cfg, layer_map=[], student_hidden=4, teacher_hidden=4))
out = objective(Outputs(student), Outputs(teacher), {"labels": labels}, Stage("distil"))
expected = torch.nn.functional.cross_entropy(student, labels) + 0.5 * ((student - teacher) ** 2).mean()
print(json.dumps({"params": cls.param_values(cfg), "yaml": yaml_cfg.logit_mse_weight, "refused": refused,
                  "space": sorted(cls.space()), "loss": float(out.loss), "expected": float(expected),
                  "options": cfg.options}))
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("copy")
    shutil.copytree(REPO / "distilbench", root / "distilbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(EXAMPLE, root / "distilbench" / "objectives" / "logit_mse.py")  # the one new file
    shutil.copytree(REPO / "registry", root / "registry")  # the task registry the package reads beside it
    return root


def _run(package: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=package, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package), "HOME": str(package)})


def test_the_new_file_is_listed_and_has_its_flag(package):
    listed = _run(package, "-m", "distilbench", "ls", "objectives")
    assert listed.returncode == 0, listed.stderr
    assert "logit-mse" in listed.stdout
    helped = _run(package, "-m", "distilbench", "run", "--help")
    assert helped.returncode == 0, helped.stderr
    objectives = helped.stdout.split("\nobjectives:\n")[1].split("\n\n", 2)[1]  # the section's entries
    assert "--logit-mse-weight LOGIT_MSE_WEIGHT" in objectives


def test_the_new_option_is_a_key_a_check_an_identity_and_a_search_range(package, tmp_path):
    yaml_file = tmp_path / "cell.yaml"
    yaml_file.write_text("logit-mse-weight: 2.0\n")
    probe = _run(package, "-c", PROBE, str(yaml_file))
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout.splitlines()[-1])
    assert got["params"] == {"logit_mse_weight": 0.5}  # in the run identity
    assert got["options"] == {"logit_mse_weight": 0.5}
    assert got["yaml"] == 2.0
    assert got["refused"] == "--logit-mse-weight must be >= 0 (got -1.0)"
    assert "logit_mse_weight" in got["space"] and {"lr", "epochs", "batch_size"} <= set(got["space"])
    assert got["loss"] == pytest.approx(got["expected"], rel=1e-6)


def test_the_docs_show_this_very_file():
    text = (REPO / "docs" / "adding-an-objective.md").read_text()
    assert "```python\n" + EXAMPLE.read_text() + "```" in text


def test_the_installed_package_does_not_have_it():
    from distilbench.objectives import OBJECTIVES

    assert "logit-mse" not in OBJECTIVES

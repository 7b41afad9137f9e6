"""End to end on the real embedded default model and real RTE data (a small slice), through the CLI."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from distilbench.cli import main
from distilbench.results.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_kd_on_real_mpnet_and_rte(glue_dir, tmp_path, capsys):
    results = tmp_path / "results.sqlite"
    args = ["run", "--objective", "kd", "--task", "rte", "--teacher", "mpnet-base", "--seeds", "2", "--data-dir", str(glue_dir),
            "--max-train-examples", "64", "--max-eval-examples", "32", "--epochs", "1", "--teacher-epochs", "1",
            "--results", str(results), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr()
    rows = ResultsStore(results).rows()
    assert sorted((r["objective"], r["seed"]) for r in rows) == [("kd", 0), ("kd", 1), ("none", 0), ("none", 1)]
    for r in rows:
        assert r["init"] == "layers:1,2,3" and r["student"] == "mpnet-base[layers:1,2,3]"
        assert 0.0 <= r["score"] <= 1.0 and 0.0 <= r["teacher_score"] <= 1.0
        assert r["extra"]["layer_mapping"] == [f"student layer {k} <- teacher layer {k}" for k in (1, 2, 3)]
        assert r["metrics"]["accuracy"] == r["score"] and r["examples_per_s"] > 0
    assert "mean ± std" in out.out and "teacher" in out.out
    # the second invocation trains nothing: the teacher comes from the cache and every row exists
    assert main(args) == 0
    assert len(ResultsStore(results).rows()) == 4


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv.*?)\n```", readme)
    assert len(commands) == 2, "the README gives exactly two set-up commands"
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()

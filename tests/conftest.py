"""Shared fixtures: the real GLUE data beside the repo, tiny models built from configs, an isolated cache."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py
# one process per run unless a test asks for more: a spawned worker costs seconds of start-up, a tiny run less than one
os.environ.setdefault("DISTILBENCH_WORKERS", "1")
# fp32 unless a test asks for another precision: `auto` would decide per machine (bf16 on one with AMX), and the tests'
# expected values and shared accelerate state assume one precision everywhere, subprocesses included
os.environ.setdefault("DISTILBENCH_MIXED_PRECISION", "fp32")

GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not GLUE.exists():
        pytest.skip(f"real GLUE data not found at {GLUE} (expected ../shared/data/glue beside the repo)")
    return GLUE


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Teachers and extracted models go to a per-session folder, never the user's cache."""
    old = os.environ.get("DISTILBENCH_CACHE")
    os.environ["DISTILBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("DISTILBENCH_CACHE", None)
    else:
        os.environ["DISTILBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    from tiny import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", layers=4, hidden=32, heads=2)


@pytest.fixture
def tiny_run_args(tiny_teacher, glue_dir, tmp_path):
    """CLI arguments for a seconds-long run of a tiny teacher on a slice of real RTE."""
    return ["--teacher", str(tiny_teacher), "--task", "rte", "--data-dir", str(glue_dir), "--max-train-examples", "48",
            "--max-eval-examples", "24", "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "8",
            "--results", str(tmp_path / "results.sqlite"), "--no-progress"]

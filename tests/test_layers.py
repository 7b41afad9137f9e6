"""The layers of README "Repository layout" hold: `lint-imports` passes with the contracts in pyproject.toml
(``[tool.importlinter]``: imports point down only), and `distilbench report` imports no torch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _env() -> dict[str, str]:
    # this checkout's package, whatever an editable install elsewhere points at
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("lint-imports not installed (pip install -e '.[test]' installs import-linter)")
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _modules_after(code: str) -> set[str]:
    script = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.splitlines()[-1].split())


def test_report_command_module_imports_no_torch():
    loaded = _modules_after("import distilbench.cli.report, distilbench.report.build, distilbench.cli")
    assert "torch" not in loaded
    assert "distilbench.cli.report" in loaded


def test_report_command_run_imports_no_torch(tmp_path):
    """The whole command, on a committed report copied away: tables, statistics, per-example tests and plots."""
    folder = tmp_path / "p002-table1"
    shutil.copytree(REPO / "reports" / "p002-table1", folder)
    loaded = _modules_after("from distilbench.cli import main\n"
                            f"assert main(['report', {str(folder)!r}]) == 0")
    assert "torch" not in loaded
    assert "distilbench.report.build" in loaded and "matplotlib" in loaded

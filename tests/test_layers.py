"""The layers of docs/design.md "Repository layout" hold: `lint-imports` passes with the contracts in pyproject.toml
(``[tool.importlinter]``: imports point down only), `distilbench report` imports no torch, and no module or function
is longer than issue #19 allows."""
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


MAX_MODULE_LINES = 400  # "no module over 400 lines"
MAX_FUNCTION_LINES = 60  # "no function over ~60 lines" (decorators, signature and docstring included)
ALLOWED_MODULES: set[str] = set()  # none: add one only with a comment saying why
ALLOWED_FUNCTIONS: set[tuple[str, str]] = set()


def _sizes() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """{module: lines} and {(module, qualified function name): lines} of every module under distilbench/."""
    import ast

    modules, functions = {}, {}
    for path in sorted((REPO / "distilbench").rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        text = path.read_text(encoding="utf-8")
        modules[name] = len(text.splitlines())

        def visit(node, prefix: str = "") -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    functions[(name, prefix + child.name)] = child.end_lineno - start + 1
                    visit(child, prefix + child.name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")
                else:
                    visit(child, prefix)

        visit(ast.parse(text))
    return modules, functions


def test_no_module_or_function_too_long():
    modules, functions = _sizes()
    long_modules = {m: n for m, n in modules.items() if n > MAX_MODULE_LINES and m not in ALLOWED_MODULES}
    long_functions = {f: n for f, n in functions.items() if n > MAX_FUNCTION_LINES and f not in ALLOWED_FUNCTIONS}
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_wheel_lists_every_package():
    """A non-editable `pip install .` (the README's first command) ships only the packages pyproject.toml names: a new
    folder of modules left out of that list would install a distilbench that cannot import itself."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "distilbench").rglob("__init__.py")}
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == {"distilbench._registry"}

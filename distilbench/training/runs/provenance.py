"""Where a stored row came from: the checkout's revision and the versions of the packages that computed it."""
from __future__ import annotations

import ast
import hashlib
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

from ... import __version__


@lru_cache(maxsize=1)
def git_revision() -> str:
    """HEAD of the checkout the package runs from, with ``-dirty`` when tracked files differ from it: a revision that
    does not reproduce a result must say so. ``unknown`` for an installed wheel."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if not head:
            return "unknown"
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# what a run's numbers depend on: the loop, its plan and caches, the objectives, the models, the data and the metrics;
# not what only stores, reports, profiles or exports them
_PACKAGE = Path(__file__).resolve().parents[2]  # distilbench/
_TRAINING_PATH = ("config.py", "options.py", "hashing.py", "data", "models", "objectives", "training")
_NOT_TRAINING = frozenset({"training/teachers/cost.py", "training/export/students.py", "training/runs/leasing.py", "training/runs/profile.py",
                           "training/runs/provenance.py", "training/runs/rows.py", "training/runs/workers.py"})


def _code(path: Path) -> str:
    """A module's code without its docstrings and comments: editing prose does not change a fingerprint."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


@lru_cache(maxsize=1)
def code_fingerprint(root: Path = _PACKAGE) -> str:
    """12 hex digits of sha256 over the training path's modules (their code, docstrings and comments left out), in
    path order: two rows with one fingerprint were computed by the same code; a row of another fingerprint may not
    compare like with like. Stored in every row (``extra.code_fingerprint``)."""
    digest = hashlib.sha256()
    for part in _TRAINING_PATH:
        top = root / part
        for path in [top] if top.is_file() else sorted(top.rglob("*.py")):
            name = path.relative_to(root).as_posix()
            if name not in _NOT_TRAINING:
                digest.update(name.encode() + b"\0" + _code(path).encode() + b"\0")
    return digest.hexdigest()[:12]


def package_versions() -> dict[str, str]:
    import accelerate
    import transformers
    return {"distilbench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}

"""Where a stored row came from: the checkout's revision and the versions of the packages that computed it."""
from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

from .. import __version__


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


def package_versions() -> dict[str, str]:
    import accelerate
    import transformers
    return {"distilbench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}

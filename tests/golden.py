"""Golden values in one data file, ``tests/data/golden.json``: every objective's loss and unweighted terms on fixed
tensors (first-token and mean-pooled) and every objective's identity (what run keys and shared-stage caches are
built from). A refactor must leave them as they are; a deliberate change is made by regenerating the file,

    python -m pytest -q tests/test_golden_losses.py tests/test_objective_identity.py --update-golden

and the file's diff is the change to review and explain in the commit. Prose (an objective's ``paper`` line) is not
pinned: a docstring edit fails nothing, a changed number does."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

PATH = Path(__file__).parent / "data" / "golden.json"
_collected: dict[str, dict[str, Any]] = {}


def plain(value: Any) -> Any:
    """``value`` as JSON data: a dataclass as ``{"ClassName": {fields}}``, tuples as lists, keys in their order."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {type(value).__name__: {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def updating(config: pytest.Config) -> bool:
    return bool(config.getoption("--update-golden"))


def expected(config: pytest.Config, section: str, key: str, actual: Any) -> Any:
    """The pinned value of ``section[key]``; when regenerating, ``actual`` is recorded and returned."""
    if updating(config):
        _collected.setdefault(section, {})[key] = plain(actual)
        return plain(actual)
    pinned = json.loads(PATH.read_text(encoding="utf-8")) if PATH.exists() else {}
    if key not in pinned.get(section, {}):
        pytest.fail(f"{section}[{key!r}] is not pinned in {PATH.name}: regenerate it with --update-golden")
    return pinned[section][key]


def write() -> None:
    """Replace each section regenerated in this session with what it recorded (sorted), keep the others."""
    if not _collected:
        return
    pinned = json.loads(PATH.read_text(encoding="utf-8")) if PATH.exists() else {}
    for section, values in _collected.items():
        pinned[section] = dict(sorted(values.items()))
    PATH.write_text(json.dumps(dict(sorted(pinned.items())), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

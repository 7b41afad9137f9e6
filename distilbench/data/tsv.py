"""Reading GLUE's tab-separated files strictly: their lines, and a label cell as a class id or a score."""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import DataError


def parse_label(task, raw: str, where: str) -> int | float:
    """Turn a label cell into a class id or score; anything unexpected is a DataError naming ``where``. ``task``: a
    sentence task (its ``regression``, ``label_range``, ``label_values`` and ``labels``)."""
    if raw.strip() == "":
        raise DataError(f"{where}: empty label; accepted: {accepted(task)}")
    if task.regression:
        try:
            score = float(raw)
        except ValueError:
            raise DataError(f"{where}: label {raw!r} is not a number; accepted: {accepted(task)}") from None
        low, high = task.label_range or (-math.inf, math.inf)
        if not (math.isfinite(score) and low <= score <= high):
            raise DataError(f"{where}: score {raw!r} outside accepted range {accepted(task)}")
        return score
    values = task.label_values or task.labels or ()
    if raw not in values:
        raise DataError(f"{where}: label {raw!r} is not one of the task's labels; accepted: {accepted(task)}")
    return values.index(raw)


def accepted(task) -> str:
    if task.regression:
        low, high = task.label_range or (-math.inf, math.inf)
        return f"a number in [{low:g}, {high:g}]"
    return ", ".join(task.label_values or task.labels or ())


def tsv_lines(path: Path) -> list[str]:
    """The lines of a GLUE TSV file, without their line endings; quotes are left alone."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # utf-8-sig drops MRPC's BOM
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    # split on "\n" only: str.splitlines would also break on \x1c, \u2028 ... inside sentences
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last row; it does not start an empty one
    return [line[:-1] if line.endswith("\r") else line for line in lines]

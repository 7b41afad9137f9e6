"""Text of a report: fixed-precision numbers, p-values, arrows, and :class:`Grid`, a table as Markdown.

A ``Grid`` is data (title, header, rows, bold cells); `cli/` renders the same cells on the terminal.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

ALPHA = 0.05  # the significance level of the report's matrices and per-example tests


def fnum(x: float | None, digits: int) -> str:
    """Fixed-point text; '–' for a missing value; never '-0.0'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fcsv(x: float | None, digits: int = 4) -> str:
    return "" if x is None or math.isnan(x) else fnum(x, digits)


def fpcsv(p: float) -> str:
    return "" if math.isnan(p) else f"{p:.6g}"


def fp(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def better_by(diff: float, higher_is_better: bool = True) -> float:
    """``diff`` (a − b) signed so that positive means a is better: for a lower-is-better score (perplexity) a
    negative difference is the better side."""
    return diff if higher_is_better else -diff


def arrow(diff: float, higher_is_better: bool = True) -> str:
    """↑ when ``diff`` (a − b) says a is better, ↓ when worse (:func:`better_by`)."""
    better = better_by(diff, higher_is_better)
    return "↑" if better > 0 else "↓" if better < 0 else "="


def score_axis(cell) -> str:
    """The axis label of a cell's plotted score: the main score × 100, or a perplexity in its own units."""
    return cell.main_score if not cell.higher_is_better else f"{cell.main_score} × 100"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def task_order(tasks: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Tasks in ``preferred`` order (a suite's), the others after them alphabetically."""
    preferred = list(preferred)
    return sorted(set(tasks), key=lambda t: (preferred.index(t) if t in preferred else len(preferred), t))


def extra_of(row: dict) -> dict:
    """A store row's ``extra`` as a dict (a dataframe may hold it as JSON text)."""
    extra = row.get("extra") or {}
    return json.loads(extra) if isinstance(extra, str) else extra


@dataclass
class Grid:
    """A table as data: the Markdown here and the terminal render (`cli/`) show the same cells."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)
    align: str = "lr"  # first column(s) left, the rest right: the alignment of column i is align[min(i, len-1)]

    def right(self, i: int) -> bool:
        """Whether column ``i`` is right-aligned."""
        return self.align[min(i, len(self.align) - 1)] == "r"

    def markdown(self) -> str:
        def esc(text: str) -> str:
            return text.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(h) for h in self.header) + " |",
                 "|" + "|".join(("---:" if self.right(i) else "---") for i in range(len(self.header))) + "|"]
        for r, row in enumerate(self.rows):
            cells = [f"**{esc(t)}**" if (r, c) in self.bold and t not in ("", "–") else esc(t) for c, t in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


__all__ = ["ALPHA", "Grid", "arrow", "extra_of", "fcsv", "fnum", "fp", "fpcsv", "slug", "task_order"]

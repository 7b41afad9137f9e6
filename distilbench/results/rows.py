"""Store rows as the statistics read them: plain dicts (from ``ResultsStore.rows()`` or ``.dataframe()``), the
finished student runs among them, grouped by cell. One grouping for :func:`distilbench.results.stats.cells_from_rows`
and everything the report reads per cell (signal checks, settings, profiles). Pure functions, no I/O."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

CELL_KEYS = ("task", "objective", "init", "teacher", "student", "config_hash")


def row_dicts(rows: Any) -> list[dict]:
    """Store rows as dicts: a list from ``ResultsStore.rows()`` or a DataFrame from ``.dataframe()``."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    out = []
    for r in rows:
        r = dict(r)
        for col in ("params", "extra"):
            if isinstance(r.get(col), str):
                r[col] = json.loads(r[col])
        if not isinstance(r.get("extra"), dict):  # a flat dataframe: extra.<name> columns
            r["extra"] = {k[6:]: v for k, v in r.items() if k.startswith("extra.")}
        out.append(r)
    return out


def is_result(row: Mapping[str, Any]) -> bool:
    """A finished student run: a finite score, kind ``student`` (or unset)."""
    score, kind = row.get("score"), row.get("kind")
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return False
    return not isinstance(kind, str) or kind == "student"


def rows_by_cell(rows: Any) -> dict[tuple, list[dict]]:
    """Finished student rows (:func:`is_result`) grouped by cell: {:attr:`~distilbench.results.stats.Cell.key`: its rows, in input order}."""
    groups: dict[tuple, list[dict]] = {}
    for r in row_dicts(rows):
        if is_result(r):
            groups.setdefault(tuple(str(r.get(k)) for k in CELL_KEYS), []).append(r)
    return groups


__all__ = ["CELL_KEYS", "is_result", "row_dicts", "rows_by_cell"]

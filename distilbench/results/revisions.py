"""Which code computed a cell's rows: the training path's fingerprint each row stores (``extra.code_fingerprint``,
:func:`distilbench.training.runs.provenance.code_fingerprint`), or, for rows stored before it was recorded, their git
revision. A claim whose two cells were computed by different code may not compare like with like: the claims table
flags it (:func:`revision_flag`)."""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping


def row_revision(row: Mapping[str, Any]) -> str:
    """``code:FINGERPRINT``, else ``git:REVISION`` (``-dirty`` kept), else ``unknown``."""
    extra = row.get("extra") or {}
    extra = json.loads(extra) if isinstance(extra, str) else extra
    if extra.get("code_fingerprint"):
        return f"code:{extra['code_fingerprint']}"
    return f"git:{row['git_rev']}" if row.get("git_rev") else "unknown"


def revisions(rows: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    return tuple(sorted({row_revision(r) for r in rows}))


def revision_flag(revs: Iterable[str]) -> str | None:
    """One line when the rows of a comparison were computed by more than one version of the training path (or may
    have been: rows that recorded only their git revision, at several revisions); None when one version computed them."""
    revs = sorted(set(revs))
    if len(revs) <= 1:
        return None
    names = ", ".join(r.split(":", 1)[-1] for r in revs)
    if all(r.startswith("code:") for r in revs):
        return f"cells computed by {len(revs)} versions of the training path ({names})"
    return f"cells stored at {len(revs)} revisions ({names}); the training path's code was not recorded for every row"

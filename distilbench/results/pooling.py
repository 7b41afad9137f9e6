"""Whether a cell's numbers were computed on a sentence representation its model does not carry.

The embedded teachers are sentence-transformers pretrained with mean pooling: their first token barely varies across
inputs below the top layer. A cell whose objective reads the sentence representation at intermediate layers (Hid-CLS,
Hid-CLS-Contrast, TED's filter heads) and ran with first-token pooling on such a model compared near-constant vectors:
its numbers cannot test a claim about that objective (docs/pooling.md). Computed from the stored rows; rows stored
before the pooling was recorded ran with first-token heads."""
from __future__ import annotations

import json
from typing import Any, Mapping

from ..data.model_registry import alias_pooling
from ..data.tasks import get_task
from ..errors import UsageError

# objectives whose intermediate term reads the sentence representation, for rows stored before each row said so
# (``extra.reads_sentence``, from ``Objective.reads_sentence``)
_SENTENCE_OBJECTIVES = frozenset({"hid-cls", "hid-cls-contrast", "ted", "ted-kl"})


def _extra(row: Mapping[str, Any]) -> Mapping[str, Any]:
    extra = row.get("extra") or {}
    return json.loads(extra) if isinstance(extra, str) else extra


def reads_sentence(row: Mapping[str, Any]) -> bool:
    extra = _extra(row)
    if "reads_sentence" in extra:
        return bool(extra["reads_sentence"])
    parts = {p.split("*")[-1] for p in str(row.get("objective", "")).split("+")}
    return bool(parts & _SENTENCE_OBJECTIVES)


def _sentence_task(name: str) -> bool:
    try:
        return get_task(name).sentence_level
    except UsageError:  # a task no longer registered: its rows say nothing else
        return True


def first_token_caveat(rows: list[Mapping[str, Any]]) -> str | None:
    """One line when the cell's rows read the first token of a model pretrained with mean pooling through an objective
    that reads the sentence representation; None otherwise (per-token tasks and cls-pooled models included)."""
    if not rows or not all(reads_sentence(r) for r in rows):
        return None
    extra = _extra(rows[0])
    if "pooling" in extra and extra["pooling"] is None or not _sentence_task(str(rows[0].get("task"))):
        return None  # a per-token task (extractive QA, causal LM): its heads read every token
    used = {(_extra(r).get("pooling") or "cls") for r in rows}
    teacher = str(rows[0].get("teacher", ""))
    declared = extra.get("teacher_declared_pooling") or alias_pooling(teacher)
    if used != {"cls"} or declared != "mean":
        return None
    return (f"not testable with first-token heads: its objective reads the sentence representation, and the teacher "
            f"`{teacher}` was pretrained with mean pooling (its first token barely varies below the top layer)")

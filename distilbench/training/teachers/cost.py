"""A run's training cost: its own training time plus its share of the work it reuses.

**Recorded at run time**, each shared part's seconds where the part is produced, and each student row's list of the
parts it used (``extra.profile.cost``):

- the teacher's fine-tuning: ``train_time_s`` in the cached teacher's ``meta.json`` (:func:`teacher.ensure_teacher`);
- the teacher's logits over the train file: ``logits-KEY.json`` beside ``logits-KEY.pt`` (:func:`teacher.teacher_logits`);
- the teacher-output cache: ``build_s`` in its ``index.json`` (:mod:`distilbench.training.teachers.teacher_cache`);
- a shared stage (TED's Stage I): ``stage-....json`` beside its cached state (:func:`record_stage`, by the runner).

A row's cost is ``{"own_s": ..., "shared": [{"id", "kind", "seconds"}, ...]}``: ``own_s`` is the student's training
wall time (``wall_time_s``: every stage and candidate retrain, not the dev evaluation) less a shared stage it trained
itself (that time is a shared part); ``id`` is the part's path under the teachers' folder, the same in every row that
used it. The teacher counts for every run whose student was copied from it or that reads it (all but a ``none`` run
from a pretrained student); evaluating it on dev is not training and does not count.

Sharing the parts out among a report's rows is :mod:`distilbench.results.cost`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .teacher import TeacherRecord, atomic_write_json


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _seconds(path: Path, key: str = "seconds") -> float | None:
    try:
        value = json.loads(path.read_text()).get(key)
    except (OSError, ValueError):
        return None
    return float(value) if value is not None else None


def part(kind: str, path: Path, root: Path, seconds: float | None) -> dict[str, Any]:
    try:
        ident = path.relative_to(root).as_posix()
    except ValueError:  # not under the teachers' folder: its own name still names its content key
        ident = path.name
    return {"id": f"{kind}:{ident}", "kind": kind, "seconds": seconds}


def teacher_part(record: TeacherRecord) -> dict[str, Any]:
    return part("teacher", record.path, record.path.parent, record.meta.get("train_time_s"))


def logits_part(record: TeacherRecord, path: Path) -> dict[str, Any]:
    return part("logits", path, record.path.parent, _seconds(_sidecar(path)))


def outputs_part(record: TeacherRecord, folder: Path, seconds: float | None) -> dict[str, Any]:
    return part("outputs", folder, record.path.parent, seconds)


def record_stage(path: Path, seconds: float, history: list[dict] | None = None) -> None:
    """The stage's seconds, and its epochs' losses (``history``: what every run that reads the stage then shows)."""
    atomic_write_json(_sidecar(path), {"seconds": seconds, **({"history": history} if history else {})})


def stage_parts(objective, shared, result, epochs: float, lr: float, root: Path, write: bool) -> tuple[list[dict], float]:
    """The shared stages one training used (``shared``: :class:`harness.SharedStages`, None for none), and the seconds
    of those it trained itself; those seconds are written beside the stage's cache when ``write``. Epochs and lr of a
    stage resolve as in :func:`harness.train` (the stage's own, else the run's): they are part of the cache's name."""
    if shared is None:
        return [], 0.0
    cached = {h.get("stage") for h in result.history if "cached" in h}
    parts, own = [], 0.0
    for stage in objective.stages():
        if not stage.shared:
            continue
        path = shared.path(objective, stage, stage.epochs if stage.epochs is not None else epochs,
                           stage.lr if stage.lr is not None else lr)
        if stage.name in result.stage_times and stage.name not in cached:  # trained here, not read from the cache
            own += result.stage_times[stage.name]
            if write:
                record_stage(path, result.stage_times[stage.name], [h for h in result.history if h.get("stage") == stage.name])
        parts.append(part("stage", path, root, _seconds(_sidecar(path))))
    return parts, own


__all__ = ["teacher_part", "logits_part", "outputs_part", "record_stage", "stage_parts"]

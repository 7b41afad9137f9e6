"""Offline stand-ins: a task whose own files are not in the data folder may name, as ``offline:`` in its registry
file, a task carved out of the files that are here (squad -> squad-devsplit, qnli -> qnli-devsplit)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from .tasks import get_task, resolve_data_dir


def offline_substitute(name: str, data_dir: str | os.PathLike | None) -> tuple[str, str] | None:
    """(task, the line that says so) when ``name``'s own files are not in the data folder but the task it names as
    ``offline:`` (carved out of the files that are here: squad -> squad-devsplit, qnli -> qnli-devsplit) can run;
    None otherwise (the hub, the files are here, or neither task's files are: the missing-file error says what to do)."""
    task = get_task(name)
    if not task.offline:
        return None
    try:
        folder = resolve_data_dir(data_dir)
    except UsageError:  # a folder that does not exist: the run's own check refuses it in its one line
        return None
    if folder is None:
        return None

    def missing(t) -> list[Path]:
        where = folder / getattr(t, "folder", getattr(t, "glue_dir", ""))
        return [where / t.files[s] for s in ("train", "dev") if not (where / t.files[s]).is_file()]

    other = get_task(task.offline)
    gone = missing(task)
    if not gone or missing(other):
        return None
    return other.name, (f"{task.name}: {', '.join(map(str, gone))} not found, so this runs --task {other.name}: "
                        f"{other.provenance or 'carved out of the files that are here'}")


__all__ = ["offline_substitute"]

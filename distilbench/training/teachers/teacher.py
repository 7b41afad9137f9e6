"""Teachers: fine-tuned once per (model, task, data, hyper-parameters) and cached on disk.

The cache key hashes everything that determines the teacher's weights, so a changed setting trains a new teacher and
an unchanged one is reused by every objective, seed and later run. Training happens under a file lock and the result
appears by an atomic rename: two runs at once train it once, and a killed run leaves no half-written teacher.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...config import RunConfig
from ...data.batching import Encoded, encode, fingerprint, selection_split
from ...data.tasks import Example, Task
from ...hashing import stable_hash
from ...models.loading import (
    cache_dir,
    declared_pooling,
    load_causal_lm,
    load_task_model,
    load_tokenizer,
    model_fingerprint,
)
from ...models.scratch import is_scratch, scratch_identity
from ..loop.precision import identity_part

TEACHER_FORMAT = "1"


@dataclass
class TeacherRecord:
    name: str  # what the user passed (alias, id or path)
    key: str
    path: Path
    meta: dict

    def dev_metrics(self, dev_fp: str) -> dict | None:
        return self.meta.get("dev", {}).get(dev_fp)


def teacher_pooling(cfg: RunConfig, model: str, task: Task) -> str | None:
    """A sentence task's teacher reads ``--pooling``, else its model's own sentence representation; None otherwise."""
    if not task.sentence_level:
        return None
    return cfg.pooling or declared_pooling(model)


def teacher_identity(cfg: RunConfig, model: str, task: Task, train_fp: str, precision: str = "fp32") -> dict:
    pooling = teacher_pooling(cfg, model, task)
    return {"format": TEACHER_FORMAT, "model": model, "weights": model_fingerprint(model.partition("@")[0]), "task": task.name,
            "task_version": task.version, "train": train_fp, "epochs": cfg.teacher_epochs, "lr": cfg.teacher_lr,
            "batch_size": cfg.batch_size, "max_length": cfg.max_length, "warmup_ratio": cfg.warmup_ratio,
            "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm, "seed": cfg.teacher_seed,
            "selection_fraction": cfg.selection_fraction, "select_best_epoch": cfg.select_best_epoch,
            # micro-batches draw other dropout masks, so they make another teacher; absent when off (older keys hold)
            **({"micro_batch": cfg.teacher_micro_batch} if cfg.teacher_micro_batch else {}),
            **identity_part(precision),  # a bf16 fine-tuning makes other weights; absent for fp32 (older keys hold)
            # a from-scratch causal LM (scratch:SIZE): its shape and tokenizer too; absent otherwise (older keys hold)
            **({"scratch": scratch_identity(model, cfg.bpe_vocab)} if is_scratch(model) else {}),
            # a mean-pooled head makes another teacher; absent for cls (older keys hold)
            **({"pooling": pooling} if pooling not in (None, "cls") else {})}


@contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock (POSIX flock); where flock does not exist the lock is a no-op."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl  # POSIX only: imported here, so the package still imports where it does not exist

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        yield


def atomic_write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def teacher_dir(model: str, task: Task, key: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.strip("/").split("/")[-1])
    return cache_dir() / "teachers" / f"{task.name}-{slug}-{key}"


def teacher_location(cfg: RunConfig, model: str, task: Task, train_all: list[Example],
                     precision: str = "fp32") -> tuple[dict, str, Path]:
    """The teacher's identity, its cache key and its folder."""
    identity = teacher_identity(cfg, model, task, fingerprint(train_all), precision)
    key = stable_hash(identity)
    return identity, key, teacher_dir(model, task, key)


def teacher_cached(cfg: RunConfig, model: str, task: Task, train_all: list[Example], precision: str = "fp32") -> bool:
    return (teacher_location(cfg, model, task, train_all, precision)[2] / "meta.json").exists()


def ensure_teacher(cfg: RunConfig, model: str, task: Task, train_all: list[Example], fine_tune: Callable,
                   log: Callable[[str], None], precision: str = "fp32") -> TeacherRecord:
    """Return the cached fine-tuned teacher, training it first when the cache misses: ``fine_tune(model, train_all)
    -> (model, tokenizer, info)`` (the run's :meth:`TeacherInference.fine_tune`, at ``precision``)."""
    identity, key, path = teacher_location(cfg, model, task, train_all, precision)
    if not (path / "meta.json").exists():
        with file_lock(path.with_suffix(".lock")):
            if not (path / "meta.json").exists():  # another process may have trained it while we waited
                log(f"teacher cache miss: fine-tuning {model} on {task.name} ({cfg.teacher_epochs:g} epochs) -> {path}")
                tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}-"))
                try:
                    start = time.perf_counter()
                    net, tokenizer, info = fine_tune(model, train_all)
                    net.save_pretrained(tmp)
                    tokenizer.save_pretrained(tmp)
                    meta = {"identity": identity, "key": key, "train_time_s": time.perf_counter() - start, **info, "dev": {}}
                    atomic_write_json(tmp / "meta.json", meta)
                    os.replace(tmp, path)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads((path / "meta.json").read_text())
    return TeacherRecord(model, key, path, meta)


def record_dev_metrics(record: TeacherRecord, dev_fp: str, metrics: dict) -> None:
    with file_lock(record.path.with_suffix(".lock")):
        meta = json.loads((record.path / "meta.json").read_text())
        meta.setdefault("dev", {})[dev_fp] = metrics
        atomic_write_json(record.path / "meta.json", meta)
        record.meta = meta


def load_teacher(record: TeacherRecord, task: Task, attn_implementation: str | None = None):
    if task.causal:
        return load_causal_lm(str(record.path), attn_implementation)
    return load_task_model(str(record.path), task, attn_implementation=attn_implementation)


def logits_key(enc: Encoded, tokenisation: str, n_rows: int, precision: str = "fp32") -> str:
    return stable_hash({"train": fingerprint(enc.examples), "tokenisation": tokenisation, "rows": n_rows,
                        **identity_part(precision)})  # computed under bf16 autocast: other values; fp32 keys unchanged


def teacher_logits(record: TeacherRecord, enc: Encoded, n_rows: int, compute: Callable[[Encoded], torch.Tensor],
                   tokenisation: str, precision: str = "fp32") -> torch.Tensor:
    """Teacher logits for every example of the train file, indexed by the example's row (``Example.idx``), computed
    once (by ``compute(enc)``: the run's :meth:`TeacherInference.logits` of the teacher, at ``precision``) and stored
    beside the teacher. Keyed by the data, the tokenisation and
    the precision: a change computes them anew."""
    path = logits_path(record, enc, n_rows, tokenisation, precision)
    if not path.exists():
        with file_lock(record.path.with_suffix(".lock")):
            if not path.exists():
                start = time.perf_counter()
                values = compute(enc)
                table = torch.full((n_rows, values.shape[-1]), float("nan"))
                table[torch.tensor([e.idx for e in enc.examples])] = values
                save_table(record, path, table, start)
    return torch.load(path, weights_only=True)


def save_table(record: TeacherRecord, path: Path, table: torch.Tensor, started: float) -> None:
    """Write a teacher-output table beside the teacher atomically (a temporary file, then a rename), with the seconds
    since ``started`` beside it: a shared part of every run that reads it (distilbench.training.teachers.cost)."""
    fd, tmp = tempfile.mkstemp(dir=record.path, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    torch.save(table, tmp)
    atomic_write_json(path.with_suffix(".json"), {"seconds": time.perf_counter() - started})
    os.replace(tmp, path)


def logits_path(record: TeacherRecord, enc: Encoded, n_rows: int, tokenisation: str, precision: str = "fp32") -> Path:
    return record.path / f"logits-{logits_key(enc, tokenisation, n_rows, precision)}.pt"


def split_for_teacher(cfg: RunConfig, train_all: list[Example]) -> tuple[list[Example], list[Example]]:
    return selection_split(train_all, cfg.selection_fraction, cfg.teacher_seed)


__all__ = ["TeacherRecord", "ensure_teacher", "load_teacher", "load_tokenizer", "record_dev_metrics",
           "teacher_logits", "split_for_teacher", "encode"]

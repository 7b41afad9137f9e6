"""Tests for the results store: round trips, stable keys, concurrent writers, SIGKILL, unwritable paths."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from distilbench.errors import UsageError
from distilbench.hashing import run_key
from distilbench.results.store import SCHEMA_VERSION, ResultsStore



def make_row(key: str, seed: int = 0, **over) -> dict:
    row = {"run_key": key, "kind": "student", "task": "sst2", "task_version": "1", "objective": "kd",
           "objective_version": "2", "init": "pretrained", "teacher": "bert-base", "student": "bert-tiny",
           "seed": seed, "config_hash": "abc", "score": 0.91, "teacher_score": 0.93,
           "metrics": {"accuracy": 0.91, "f1": 0.9}, "params": {"lr": 1e-4, "temperature": 2.0},
           "wall_time_s": 12.5, "examples_per_s": 300.0, "peak_mem_mb": 512.0, "git_rev": "deadbeef",
           "versions": {"torch": "2.3.0"}}
    row.update(over)
    return row


def test_put_get_has_round_trip(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "sub" / "results.sqlite")
    assert not store.has("k1") and store.get("k1") is None
    assert store.put(make_row("k1", note="hello")) is True
    got = store.get("k1")
    assert store.has("k1")
    assert got["metrics"] == {"accuracy": 0.91, "f1": 0.9}
    assert got["params"] == {"lr": 1e-4, "temperature": 2.0} and got["versions"] == {"torch": "2.3.0"}
    assert got["extra"] == {"note": "hello"} and got["seed"] == 0 and got["score"] == 0.91
    assert got["created_at"].endswith("+00:00")
    stored = store._conn.execute("SELECT params FROM runs").fetchone()[0]
    assert stored == json.dumps({"lr": 1e-4, "temperature": 2.0}, sort_keys=True, separators=(",", ":"))

    assert store.put(make_row("k1", score=0.1)) is False  # existing key: refused, unchanged
    assert store.get("k1") == got
    assert store.put(make_row("k1", score=0.1), replace=True) is True
    assert store.get("k1")["score"] == 0.1 and len(store.rows()) == 1
    with pytest.raises(ValueError, match="task"):
        store.put({"run_key": "k2", "seed": 0})


def test_rows_filters_and_order(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    for key, task, obj, seed in [("a", "sst2", "mse", 1), ("b", "mnli", "kd", 0), ("c", "sst2", "kd", 1),
                                 ("d", "sst2", "kd", 0)]:
        store.put(make_row(key, seed=seed, task=task, objective=obj))
    assert [r["run_key"] for r in store.rows()] == ["b", "d", "c", "a"]
    assert [r["run_key"] for r in store.rows(task="sst2", objective="kd")] == ["d", "c"]
    assert store.rows(task="qqp") == []
    with pytest.raises(UsageError, match="unknown result column"):
        store.rows(nope=1)


def test_run_key_stable_and_sensitive() -> None:
    ident = {"task": "sst2", "objective": "kd", "init": "pretrained", "teacher": "t", "student": "s",
             "params": {"lr": 1e-4, "alpha": 0.5}, "seed": 3}
    shuffled = {k: ident[k] for k in reversed(list(ident))}
    shuffled["params"] = {"alpha": 0.5, "lr": 1e-4}
    key = run_key(ident)
    assert key == run_key(shuffled)
    canon = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    assert key == hashlib.sha256(canon.encode()).hexdigest()[:16]
    changed = {**{k: "other" for k in ident}, "params": {"lr": 2e-4, "alpha": 0.5}, "seed": 4}
    for field, value in changed.items():
        assert run_key({**ident, field: value}) != key, field


def _writer(path: str, name: str, barrier, results) -> None:
    keys = [f"{name}-{i}" for i in range(200)] + [f"shared-{i}" for i in range(50)]
    random.Random(name).shuffle(keys)
    try:
        store = ResultsStore(path)
        barrier.wait(timeout=60)
        results.put(sum(store.put(make_row(k)) for k in keys))
    except BaseException as exc:  # report instead of dying silently, so the parent fails fast
        results.put(repr(exc))


def test_two_concurrent_writers(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    path, barrier, results = str(tmp_path / "c.sqlite"), ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, n, barrier, results)) for n in ("a", "b")]
    for p in procs:
        p.start()
    inserted = [results.get(timeout=120) for _ in procs]
    assert all(isinstance(n, int) for n in inserted), inserted
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(inserted) == 450  # each shared key inserted by exactly one writer
    keys = [r["run_key"] for r in ResultsStore(path).rows()]
    expected = {f"{n}-{i}" for n in "ab" for i in range(200)} | {f"shared-{i}" for i in range(50)}
    assert len(keys) == 450 and set(keys) == expected


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_store import make_row
from distilbench.results.store import ResultsStore
store = ResultsStore({path!r})
for i in range(5):
    store.put(make_row(f"k{{i}}", seed=i))
class KillAfterInsert:  # dies inside put(): after BEGIN IMMEDIATE and the INSERT, before COMMIT
    def __init__(self, conn): self.conn = conn
    def __getattr__(self, name): return getattr(self.conn, name)
    def execute(self, sql, *args):
        out = self.conn.execute(sql, *args)
        if sql.startswith("INSERT"):
            os.kill(os.getpid(), signal.SIGKILL)
        return out
store._conn = KillAfterInsert(store._conn)
store.put(make_row("k5", seed=5))
"""


def test_killed_writer_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    script = KILLED_WRITER.format(repo=str(REPO), tests=str(REPO / "tests"), path=str(path))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    store = ResultsStore(path)
    assert [r["run_key"] for r in store.rows()] == [f"k{i}" for i in range(5)]
    assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert store.put(make_row("k5", seed=5)) is True  # the re-run completes the missing row


def _bad_paths(tmp_path: Path) -> list[Path]:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a sqlite database at all" * 50)
    a_dir = tmp_path / "a_dir"
    a_dir.mkdir()
    return [a_file / "results.sqlite", a_dir, garbage]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["parent-is-file", "is-directory", "garbage-file"])
def test_unwritable_path_is_usage_error(tmp_path: Path, which: int) -> None:
    path = _bad_paths(tmp_path)[which]
    with pytest.raises(UsageError) as info:
        ResultsStore(path)
    msg = str(info.value)
    assert str(path) in msg and "--results" in msg and "\n" not in msg
    assert msg.startswith(f"cannot write results to {path}: ")


def _set_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.close()


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    ResultsStore(path).close()
    _set_version(path, SCHEMA_VERSION + 1)
    with pytest.raises(UsageError, match="newer"):
        ResultsStore(path)
    _set_version(path, SCHEMA_VERSION)  # the current version still opens
    assert ResultsStore(path).rows() == []


def test_dataframe_columns(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "d.sqlite")
    assert "task" in store.dataframe().columns and len(store.dataframe()) == 0
    store.put(make_row("k1", seed=0, note="x"))
    store.put(make_row("k2", seed=1, metrics={"accuracy": 0.5}))
    df = store.dataframe()
    assert {"run_key", "task", "objective", "seed", "score", "params", "metric.accuracy", "metric.f1",
            "extra.note"} <= set(df.columns)
    assert "metrics" not in df.columns and "extra" not in df.columns
    assert list(df["metric.accuracy"]) == [0.91, 0.5] and df["metric.f1"].isna().tolist() == [False, True]
    assert len(store.dataframe(seed=1)) == 1

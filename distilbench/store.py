"""The results store: one SQLite row per finished run, safe against SIGKILL and concurrent writers.

Why SQLite in WAL mode with one short ``BEGIN IMMEDIATE`` transaction per row: a committed row survives
the process being killed at any instant, a half-written row is rolled back on the next open, and two
``distilbench run`` processes sharing a file serialise their writes through ``busy_timeout`` instead of
failing. Rows are insert-only; ``replace=True`` (``--force``) is the only way to overwrite one.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import pandas

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0

# name -> SQL type; order is the table's column order.
COLUMNS: dict[str, str] = {
    "run_key": "TEXT PRIMARY KEY", "kind": "TEXT", "task": "TEXT NOT NULL", "task_version": "TEXT",
    "objective": "TEXT", "objective_version": "TEXT", "init": "TEXT", "teacher": "TEXT", "student": "TEXT",
    "seed": "INTEGER NOT NULL", "config_hash": "TEXT", "score": "REAL", "teacher_score": "REAL",
    "metrics": "TEXT", "params": "TEXT", "wall_time_s": "REAL", "examples_per_s": "REAL",
    "peak_mem_mb": "REAL", "git_rev": "TEXT", "versions": "TEXT", "created_at": "TEXT", "extra": "TEXT",
}
JSON_COLUMNS = ("metrics", "params", "versions", "extra")
REQUIRED = ("run_key", "task", "seed")


def _json_default(obj: Any) -> Any:
    """Let numpy/torch scalars (``.item()``) and paths reach JSON instead of failing a finished run."""
    return obj.item() if hasattr(obj, "item") else str(obj)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def run_key(identity: dict) -> str:
    """Stable 16-hex id of a run: sha256 of canonical JSON, so key order never changes it and re-runs skip."""
    return hashlib.sha256(_dumps(identity).encode("utf-8")).hexdigest()[:16]


class ResultsStore:
    """Append-mostly table of finished runs in one SQLite file; one instance per process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._set_wal()
            self._conn.execute("PRAGMA synchronous = NORMAL")  # WAL+NORMAL: durable against process death
            # Creating the schema is a real write transaction: an unwritable file fails here, before training.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cols = ", ".join(f"{name} {sql}" for name, sql in COLUMNS.items())
                self._conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
                self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                found = int(self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except (OSError, sqlite3.Error, ValueError) as exc:
            if hasattr(self, "_conn"):
                self._conn.close()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UsageError(f"cannot write results to {self.path}: {reason}; "
                             "pass --results with a writable file path") from None
        if found > SCHEMA_VERSION:
            self._conn.close()
            raise UsageError(f"results file {self.path} has schema version {found}, newer than this distilbench "
                             f"supports ({SCHEMA_VERSION}); upgrade distilbench or pass --results with another file")

    def _set_wal(self) -> None:
        """Switching to WAL needs an exclusive lock that busy_timeout does not always wait for: retry briefly."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                    raise sqlite3.OperationalError("cannot enable WAL journal mode")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, run_key: str) -> bool:
        return self._conn.execute("SELECT 1 FROM runs WHERE run_key = ?", (run_key,)).fetchone() is not None

    def get(self, run_key: str) -> dict | None:
        found = self.rows(run_key=run_key)
        return found[0] if found else None

    def put(self, row: dict, *, replace: bool = False) -> bool:
        """Write one finished run in its own transaction; False (nothing changed) if the key exists and not replace."""
        missing = [k for k in REQUIRED if row.get(k) is None]
        if missing:
            raise ValueError(f"result row lacks required field(s) {missing}")
        values = {k: v for k, v in row.items() if k in COLUMNS and k != "extra"}
        extra = {**(row.get("extra") or {}), **{k: v for k, v in row.items() if k not in COLUMNS}}
        values["extra"] = extra or None
        values.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        for col in JSON_COLUMNS:
            if values.get(col) is not None:
                values[col] = _dumps(values[col])
        names = list(values)
        sql = (f"INSERT {'OR REPLACE ' if replace else ''}INTO runs ({', '.join(names)}) "
               f"VALUES ({', '.join('?' * len(names))})" + ("" if replace else " ON CONFLICT(run_key) DO NOTHING"))
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            inserted = self._conn.execute(sql, [values[n] for n in names]).rowcount == 1
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return inserted

    def rows(self, **filters: Any) -> list[dict]:
        """Rows matching equality filters on top-level columns (None matches NULL), JSON columns as dicts."""
        unknown = sorted(set(filters) - set(COLUMNS))
        if unknown:
            raise UsageError(f"unknown result column(s) {unknown}; known: {', '.join(COLUMNS)}")
        where = " AND ".join(f"{k} IS ?" for k in filters) or "1"
        cur = self._conn.execute(f"SELECT * FROM runs WHERE {where} ORDER BY task, objective, seed, run_key",
                                 list(filters.values()))
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            for col in JSON_COLUMNS:
                row[col] = json.loads(row[col]) if row[col] is not None else {}
            out.append(row)
        return out

    def dataframe(self, **filters: Any) -> "pandas.DataFrame":
        """Flat table for reports: ``metrics`` -> ``metric.<name>``, ``extra`` -> ``extra.<name>`` columns."""
        import pandas  # lazy: listing or running must not pay for pandas

        flat = []
        for row in self.rows(**filters):
            metrics, extra = row.pop("metrics"), row.pop("extra")
            row.update({f"metric.{k}": v for k, v in metrics.items()})
            row.update({f"extra.{k}": v for k, v in extra.items()})
            flat.append(row)
        base = [c for c in COLUMNS if c not in ("metrics", "extra")]
        return pandas.DataFrame(flat, columns=base + sorted({k for r in flat for k in r} - set(base)))

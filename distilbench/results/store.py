"""The results store: one row per finished run, safe against SIGKILL and concurrent writers, and the runs' leases.

``--results`` is an SQLite file (the default) or a PostgreSQL URL that workers on several machines share
(:mod:`distilbench.results.backends`). Each row is written in one short transaction: a committed row survives the process
being killed at any instant, a half-written one is rolled back, and concurrent writers wait for each other instead
of failing. Rows are insert-only; ``replace=True`` (``--force``) is the only way to overwrite one. Writing a row ends
its run's lease (:mod:`distilbench.results.leases`) in the same transaction.

An SQLite file's ``leases`` table is created by the first claim, not on open: opening a store only to read it
(``distilbench report`` on a committed store) leaves the file as it was.
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import leases
from .backends import BUSY_TIMEOUT_S, SQLiteBackend, display, open_backend  # noqa: F401 - BUSY_TIMEOUT_S kept importable here
from ..errors import UsageError
from ..hashing import canonical_json, json_default

if TYPE_CHECKING:
    import pandas

SCHEMA_VERSION = 1

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
ORDER = ("task", "objective", "seed", "run_key")


def _dumps(value: Any) -> str:
    return canonical_json(value, default=json_default)


def _column_type(sql: str, dialect: str) -> str:
    # PostgreSQL's REAL has 4 bytes: scores and timings keep SQLite's 8-byte precision as DOUBLE PRECISION
    return sql if dialect == "sqlite" else sql.replace("REAL", "DOUBLE PRECISION")


class ResultsStore:
    """Append-mostly table of finished runs (an SQLite file or a PostgreSQL database); one instance per process."""

    def __init__(self, location: str | Path):
        self.location = display(location)  # what logs and reports print: a URL without its password
        self._db = None
        self._leases_made = False
        try:
            self.lease_s = leases.lease_seconds()  # a bad $DISTILBENCH_LEASE_S fails here, before training
            self._db = open_backend(location)
            found = self._create_schema()
        except UsageError:
            raise
        except Exception as exc:  # every driver's error becomes one line naming the store
            self._close_quietly()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if self.is_database:  # a refused connection, a bad host or port, a missing database, a wrong password
                raise UsageError(f"cannot open results database {self.location}: {reason[:200]}; pass --results with a "
                                 "reachable database URL (postgresql+psycopg2://USER@HOST:PORT/DB) or an SQLite file path") from None
            if isinstance(exc, (OSError, sqlite3.Error, ValueError)):
                raise UsageError(f"cannot write results to {self.location}: {reason}; "
                                 "pass --results with a writable file path") from None
            raise
        self.path = self._db.path if isinstance(self._db, SQLiteBackend) else None
        self.holder = leases.holder_id()
        if found > SCHEMA_VERSION:
            self._db.close()
            raise UsageError(f"results store {self.location} has schema version {found}, newer than this distilbench "
                             f"supports ({SCHEMA_VERSION}); upgrade distilbench or pass --results with another store")

    @property
    def is_database(self) -> bool:
        """A database server (shared across machines), not an SQLite file."""
        return self._db is not None and not isinstance(self._db, SQLiteBackend)

    def _create_schema(self) -> int:
        """Creating the schema is a real write transaction: an unwritable store fails here, before training."""
        db = self._db
        cols = ", ".join(f"{name} {_column_type(sql, db.dialect)}" for name, sql in COLUMNS.items())
        with db.transaction() as q:
            if db.dialect != "sqlite":
                db.lock_schema(q)
            q(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
            q("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            q("INSERT INTO meta VALUES ('schema_version', :version) ON CONFLICT (key) DO NOTHING", version=str(SCHEMA_VERSION))
            if db.dialect != "sqlite":  # a server database has no committed file to keep unchanged
                q(leases.TABLE)
                self._leases_made = True
            return int(q("SELECT value FROM meta WHERE key = 'schema_version'").rows[0][0])

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:  # noqa: BLE001 - already failing; the first error is the one to report
                pass

    @property
    def _conn(self) -> sqlite3.Connection:
        """The SQLite connection (tests inspect and wrap it)."""
        return self._db.conn

    @_conn.setter
    def _conn(self, conn) -> None:
        self._db.conn = conn

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows -----------------------------------------------------------------------------------------------------
    def has(self, run_key: str) -> bool:
        return bool(self._db.read("SELECT 1 FROM runs WHERE run_key = :key", key=run_key).rows)

    def get(self, run_key: str) -> dict | None:
        found = self.rows(run_key=run_key)
        return found[0] if found else None

    def put(self, row: dict, *, replace: bool = False) -> bool:
        """Write one finished run in its own transaction, ending its lease; False (nothing changed) if the key exists
        and not replace."""
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
        insert = f"INTO runs ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"
        if not replace:
            sql = f"INSERT {insert} ON CONFLICT(run_key) DO NOTHING"
        elif self._db.dialect == "sqlite":
            sql = f"INSERT OR REPLACE {insert}"
        else:  # every column, as SQLite's REPLACE does: one not given becomes NULL
            sql = (f"INSERT {insert} ON CONFLICT (run_key) DO UPDATE SET "
                   + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "run_key"))
        with self._db.transaction() as q:
            inserted = q(sql, **values).rowcount == 1
            if self._has_leases(q):
                leases.finished(q, values["run_key"])
        return inserted

    def rows(self, **filters: Any) -> list[dict]:
        """Rows matching equality filters on top-level columns (None matches NULL), JSON columns as dicts."""
        unknown = sorted(set(filters) - set(COLUMNS))
        if unknown:
            raise UsageError(f"unknown result column(s) {unknown}; known: {', '.join(COLUMNS)}")
        where = " AND ".join(f"{k} {self._db.same} :{k}" for k in filters) or "1 = 1"
        sqlite = self._db.dialect == "sqlite"
        found = self._db.read(f"SELECT * FROM runs WHERE {where}" + (f" ORDER BY {', '.join(ORDER)}" if sqlite else ""),
                              **filters)
        out = []
        for values in found.rows:
            row = dict(zip(found.names, values))
            for col in JSON_COLUMNS:
                row[col] = json.loads(row[col]) if row[col] is not None else {}
            out.append(row)
        if not sqlite:  # SQLite's order (NULL first, then by code point), not the server's locale collation
            out.sort(key=lambda r: tuple((r[c] is not None, r[c]) for c in ORDER))
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

    # -- leases (distilbench.results.leases) ------------------------------------------------------------------------------
    def _has_leases(self, q) -> bool:
        if not self._leases_made:
            self._leases_made = self._db.has_table(q, "leases")
        return self._leases_made

    def claim(self, run_key: str, label: str, *, holder: str | None = None, now: float | None = None) -> leases.Claim:
        """Claim a run before training it: claimed, or held by a live worker (skip it)."""
        now = self._db.now() if now is None else now
        with self._db.transaction() as q:
            if not self._leases_made:
                q(leases.TABLE)
                self._leases_made = True
            return leases.claim(q, run_key, holder or self.holder, label, self.lease_s, now)

    def renew(self, run_key: str, *, holder: str | None = None, now: float | None = None) -> bool:
        now = self._db.now() if now is None else now
        with self._db.transaction() as q:
            return leases.renew(q, run_key, holder or self.holder, self.lease_s, now)

    def release(self, run_key: str, *, holder: str | None = None) -> None:
        with self._db.transaction() as q:
            if self._has_leases(q):
                leases.release(q, run_key, holder or self.holder)

    def live_leases(self, now: float | None = None) -> list[leases.Lease]:
        """The live leases: runs some worker is training now."""
        now = self._db.now() if now is None else now
        if not self._has_leases(self._db.read):
            return []
        return leases.held(self._db.read, now)

    def heartbeat(self, run_key: str, on_lost: Callable[[], None] = lambda: None,
                  on_error: Callable[[Exception], None] = lambda exc: None) -> leases.Heartbeat:
        """A context manager renewing ``run_key``'s lease every lease/4 seconds while the run trains."""
        return leases.Heartbeat(lambda: self.renew(run_key), self.lease_s / 4, on_lost, on_error, self._db.close_thread)

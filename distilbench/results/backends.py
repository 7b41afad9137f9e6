"""Where the results store's tables live: one SQLite file, or a database server reached through SQLAlchemy.

``--results`` takes either. A plain path (or ``sqlite:///PATH``) is an SQLite file, opened with the standard
library in WAL mode: each write is one short ``BEGIN IMMEDIATE`` transaction, so a committed row survives the
process being killed at any instant, a half-written one is rolled back on the next open, and writers sharing the
file wait for each other (``busy_timeout``) instead of failing. A ``postgresql[+DRIVER]://`` URL is a PostgreSQL
database that processes on several machines share (SQLAlchemy, which Optuna already brings; the driver, e.g.
psycopg2, is the ``postgres`` extra); its transactions give the same guarantees.

Both backends run the same SQL, written once with named parameters (``:name``): the store and the leases differ
only where the dialects do (column types, ``IS`` on NULL, replacing a row), and that is asked of ``dialect``.
"""
from __future__ import annotations

import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import UsageError

BUSY_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10  # an unreachable server is a clear error within seconds, not a hang
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
ACCEPTED = "an SQLite file path, sqlite:///PATH, or postgresql[+DRIVER]://USER@HOST[:PORT]/DATABASE"


@dataclass
class Result:
    rowcount: int
    names: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)


Query = Callable[..., Result]  # q(sql, **params) inside one transaction


def is_url(location: str | Path) -> bool:
    return bool(_URL.match(str(location)))


def display(location: str | Path) -> str:
    """``location`` as printed in logs and reports: a URL's password is never shown."""
    if not is_url(location):
        return str(location)
    try:
        from sqlalchemy.engine import make_url

        return make_url(str(location)).render_as_string(hide_password=True)
    except Exception:  # unparsable: the caller's error names it; show only the scheme
        return str(location).split("://", 1)[0] + "://..."


def open_backend(location: str | Path):
    """The backend for ``location``; an unknown scheme, a bad URL or an unreachable server is one UsageError line."""
    text = str(location)
    if not is_url(text):
        return SQLiteBackend(Path(text))
    scheme = text.split("://", 1)[0].lower()
    if scheme == "sqlite":
        if not text.startswith("sqlite:///") or len(text) == len("sqlite:///"):
            raise UsageError(f"--results {text}: an SQLite URL is sqlite:///PATH (three slashes, then the file path); "
                             f"accepted: {ACCEPTED}")
        return SQLiteBackend(Path(text[len("sqlite:///"):]))
    if scheme.split("+")[0] != "postgresql":
        raise UsageError(f"--results {display(text)}: unknown database scheme {scheme!r}; accepted: {ACCEPTED}")
    return SQLAlchemyBackend(text)


class SQLiteBackend:
    """One SQLite file. The connection belongs to the thread that opened the store; another thread (a lease's
    heartbeat) gets its own, because an sqlite3 connection must not cross threads."""

    dialect = "sqlite"
    same = "IS"  # NULL-safe equality

    def __init__(self, path: Path):
        self.path = path
        self.location = str(path)
        self._owner = threading.get_ident()
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = self._connect(first=True)

    def _connect(self, first: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if first:
            try:
                self._set_wal(conn)
            except BaseException:
                conn.close()
                raise
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL+NORMAL: durable against process death
        return conn

    @staticmethod
    def _set_wal(conn: sqlite3.Connection) -> None:
        """Switching to WAL needs an exclusive lock that busy_timeout does not always wait for: retry briefly."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                    raise sqlite3.OperationalError("cannot enable WAL journal mode")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _conn_here(self):
        if threading.get_ident() == self._owner:
            return self.conn
        if getattr(self._local, "conn", None) is None:
            self._local.conn = self._connect()
        return self._local.conn

    def _query(self, conn) -> Query:
        def q(sql: str, **params: Any) -> Result:
            cur = conn.execute(sql, params)
            if cur.description is None:
                return Result(cur.rowcount)
            return Result(cur.rowcount, [d[0] for d in cur.description], cur.fetchall())
        return q

    @contextmanager
    def transaction(self) -> Iterator[Query]:
        conn = self._conn_here()
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: check-then-write inside is atomic
        try:
            yield self._query(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def read(self, sql: str, **params: Any) -> Result:
        return self._query(self._conn_here())(sql, **params)

    def now(self) -> float:
        return time.time()  # one file, one machine: its clock

    def has_table(self, q: Query, name: str) -> bool:
        return bool(q("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name", name=name).rows)

    def close_thread(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def close(self) -> None:
        self.conn.close()


class SQLAlchemyBackend:
    """A PostgreSQL database through SQLAlchemy: a connection pool (thread-safe), one transaction per operation."""

    dialect = "postgresql"
    same = "IS NOT DISTINCT FROM"

    def __init__(self, url: str):
        try:
            import sqlalchemy
            from sqlalchemy.engine import make_url
        except ImportError:
            raise UsageError(f"--results {display(url)}: a database URL needs SQLAlchemy (pip install sqlalchemy "
                             "psycopg2-binary)") from None
        self.location = display(url)
        try:
            parsed = make_url(url)
            connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_driver_name() == "psycopg2" else {}
            self.engine = sqlalchemy.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
            raise UsageError(f"--results {self.location}: its database driver is not installed ({exc}); for "
                             "PostgreSQL: pip install psycopg2-binary") from None
        except (sqlalchemy.exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
            raise UsageError(f"--results {self.location}: not a valid database URL ({exc}); accepted: {ACCEPTED}") from None
        self._text = sqlalchemy.text

    @contextmanager
    def transaction(self) -> Iterator[Query]:
        with self.engine.begin() as conn:
            def q(sql: str, **params: Any) -> Result:
                res = conn.execute(self._text(sql), params)
                if not res.returns_rows:
                    return Result(res.rowcount)
                return Result(res.rowcount, list(res.keys()), [tuple(r) for r in res.fetchall()])
            yield q

    def read(self, sql: str, **params: Any) -> Result:
        with self.transaction() as q:
            return q(sql, **params)

    def now(self) -> float:
        # the server's clock, not this machine's: workers on several machines compare lease expiries on one clock
        return float(self.read("SELECT EXTRACT(EPOCH FROM clock_timestamp()) AS now").rows[0][0])

    def has_table(self, q: Query, name: str) -> bool:
        return bool(q("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                      "AND table_name = :name", name=name).rows)

    def lock_schema(self, q: Query) -> None:
        """Serialise schema creation: two workers creating the same table at once would collide in the catalog."""
        q("SELECT pg_advisory_xact_lock(:key)", key=0x64697374)  # "dist"

    def close_thread(self) -> None:
        pass

    def close(self) -> None:
        self.engine.dispose()

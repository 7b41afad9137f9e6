"""Leases: which worker is training which run, so that processes sharing one results store divide a grid.

Before training a run (one objective × seed of a cell), a worker *claims* it: one row in the ``leases`` table,
keyed by the run's ``run_key``, naming the holder and an expiry time. A claim succeeds when no lease exists, when the
lease has expired (its holder died: SIGKILL, a lost machine), when the holder is a process of this machine that no
longer exists (no need to wait for the expiry), or when the holder is the claimant itself; otherwise
the run is *held* and the worker skips it. While training, a :class:`Heartbeat` thread renews the lease every
``lease / 4`` seconds, so a live holder never expires. Writing the finished row deletes the lease in the same
transaction (``ResultsStore.put``); a run that fails releases it.

The claim is one atomic statement in both backends (``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired or
mine``): two workers claiming at once cannot both win. Expiry is read on the database's clock (PostgreSQL's, or
the one machine's for an SQLite file), so workers on machines whose clocks differ still agree. A holder that
stalls past its lease can lose the run to another worker; both may then finish it, and the insert-only row write
keeps exactly one row.

``DISTILBENCH_LEASE_S`` sets the lease (default 120 s): a dead worker's run waits that long before another takes it.
"""
from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Callable

from ..errors import UsageError

DEFAULT_LEASE_S = 120.0
TABLE = ("CREATE TABLE IF NOT EXISTS leases (run_key TEXT PRIMARY KEY, holder TEXT NOT NULL, label TEXT, "
         "claimed_at DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION NOT NULL)")

_CLAIM = ("INSERT INTO leases (run_key, holder, label, claimed_at, expires) VALUES (:key, :holder, :label, :now, :expires) "
          "ON CONFLICT (run_key) DO UPDATE SET holder = excluded.holder, label = excluded.label, "
          "claimed_at = excluded.claimed_at, expires = excluded.expires "
          "WHERE leases.expires <= :now OR leases.holder = :holder")


@dataclass(frozen=True)
class Lease:
    run_key: str
    holder: str
    label: str | None
    claimed_at: float
    expires: float


@dataclass(frozen=True)
class Claim:
    claimed: bool
    holder: str  # who holds the run now (the claimant, when claimed)
    previous: Lease | None  # the lease found before the claim: an expired one was taken over


def lease_seconds() -> float:
    """The lease length from ``$DISTILBENCH_LEASE_S`` (default 120 s)."""
    raw = os.environ.get("DISTILBENCH_LEASE_S")
    if raw is None or raw.strip() == "":
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise UsageError(f"DISTILBENCH_LEASE_S must be a positive number of seconds (got {raw!r}); "
                         f"unset it for the default {DEFAULT_LEASE_S:g}")
    return value


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()[:8]
    except OSError:
        return ""


def holder_id() -> str:
    """This process, as other workers see it in a lease: host, pid, and the boot (a pid is unique only within one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_boot_id()}"


def dead_here(holder: str) -> bool:
    """True when ``holder`` is a process of this machine's current boot that no longer exists: its lease need not
    run out (a rerun after a SIGKILL, a --workers process that died). Anything else counts as alive."""
    host, _, rest = holder.partition(":")
    pid, _, boot = rest.partition(":")
    if host != socket.gethostname() or not boot or boot != _boot_id() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but another user's
        return False
    return False


def _lease(row: tuple) -> Lease:
    return Lease(row[0], row[1], row[2], float(row[3]), float(row[4]))


def claim(q, key: str, holder: str, label: str, lease_s: float, now: float) -> Claim:
    """Claim ``key`` for ``holder`` inside the caller's transaction ``q``."""
    found = q("SELECT run_key, holder, label, claimed_at, expires FROM leases WHERE run_key = :key", key=key).rows
    previous = _lease(found[0]) if found else None
    won = q(_CLAIM, key=key, holder=holder, label=label, now=now, expires=now + lease_s).rowcount == 1
    if not won and previous is not None and dead_here(previous.holder):  # no need to wait for its expiry
        won = q("UPDATE leases SET holder = :holder, label = :label, claimed_at = :now, expires = :expires "
                "WHERE run_key = :key AND holder = :dead", key=key, holder=holder, label=label, now=now,
                expires=now + lease_s, dead=previous.holder).rowcount == 1
    if won:
        return Claim(True, holder, previous if previous and previous.holder != holder else None)
    current = q("SELECT holder FROM leases WHERE run_key = :key", key=key).rows
    return Claim(False, current[0][0] if current else (previous.holder if previous else "?"), previous)


def renew(q, key: str, holder: str, lease_s: float, now: float) -> bool:
    """Push ``key``'s expiry forward; False when the lease is no longer ``holder``'s (taken over or released)."""
    return q("UPDATE leases SET expires = :expires WHERE run_key = :key AND holder = :holder",
             key=key, holder=holder, expires=now + lease_s).rowcount == 1


def release(q, key: str, holder: str) -> None:
    q("DELETE FROM leases WHERE run_key = :key AND holder = :holder", key=key, holder=holder)


def finished(q, key: str) -> None:
    """A finished run's row was written in this transaction: whoever holds its lease, it is over."""
    q("DELETE FROM leases WHERE run_key = :key", key=key)


def held(q, now: float) -> list[Lease]:
    """Live leases, by label."""
    rows = q("SELECT run_key, holder, label, claimed_at, expires FROM leases WHERE expires > :now", now=now).rows
    return sorted((_lease(r) for r in rows), key=lambda lease: (lease.label or "", lease.run_key))


class Heartbeat:
    """Renews one lease every ``interval`` seconds in a daemon thread while the run trains.

    ``renew()`` returns False when the lease was lost; ``on_lost`` is called once then (the run goes on: its row
    write is insert-only, so a duplicate finisher stores nothing twice). A failed renewal (the database briefly
    unreachable) is retried at the next beat; the lease survives as long as one beat per lease gets through."""

    def __init__(self, renew: Callable[[], bool], interval: float, on_lost: Callable[[], None] = lambda: None,
                 on_error: Callable[[Exception], None] = lambda exc: None, on_exit: Callable[[], None] = lambda: None):
        self._renew, self._interval = renew, interval
        self._on_lost, self._on_error, self._on_exit = on_lost, on_error, on_exit
        self._stop = threading.Event()
        self.beats = 0
        self.lost = False
        self._thread = threading.Thread(target=self._run, name="distilbench-lease", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                try:
                    ok = self._renew()
                except Exception as exc:  # noqa: BLE001 - a beat that fails is retried; the run must go on
                    self._on_error(exc)
                    continue
                self.beats += 1
                if not ok and not self.lost:
                    self.lost = True
                    self._on_lost()
        finally:
            self._on_exit()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

"""Leases on runs (distilbench.results.leases through ResultsStore): claim, renew, expire, take over, release, a finished row
ending its lease, the heartbeat thread, and concurrent claimers, on SQLite and on PostgreSQL (skipped, saying why,
where no server can be started). Times are passed explicitly (``now=``), so nothing here depends on the clock."""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import REPO
from distilbench.results import leases
from distilbench.errors import UsageError
from distilbench.results.store import ResultsStore
from test_store import make_row

LEASE = 120.0


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "results.sqlite")
    return request.getfixturevalue("pg_database")


@pytest.fixture
def store(location, monkeypatch):
    monkeypatch.delenv("DISTILBENCH_LEASE_S", raising=False)
    s = ResultsStore(location)
    yield s
    s.close()


def test_claim_is_exclusive_until_the_lease_runs_out(store):
    assert store.lease_s == LEASE
    first = store.claim("k1", "rte/kd seed 0", holder="a", now=1000.0)
    assert first.claimed and first.holder == "a" and first.previous is None
    other = store.claim("k1", "rte/kd seed 0", holder="b", now=1000.0 + LEASE - 1)
    assert not other.claimed and other.holder == "a"
    again = store.claim("k1", "rte/kd seed 0", holder="a", now=1001.0)  # a holder may claim its own run again
    assert again.claimed and again.previous is None
    assert store.claim("k2", "rte/kd seed 1", holder="b", now=1001.0).claimed  # another run is free
    live = store.live_leases(now=1002.0)
    assert [(x.run_key, x.holder, x.label) for x in live] == [("k1", "a", "rte/kd seed 0"), ("k2", "b", "rte/kd seed 1")]
    assert live[0].expires == 1001.0 + LEASE and live[0].claimed_at == 1001.0


def test_renewal_keeps_a_run_and_expiry_hands_it_over(store):
    assert store.claim("k", "x", holder="a", now=0.0).claimed
    assert store.renew("k", holder="a", now=100.0)  # expires at 100 + LEASE now
    assert not store.claim("k", "x", holder="b", now=LEASE + 10).claimed  # unrenewed it would have expired
    assert not store.renew("k", holder="b", now=101.0)  # only the holder renews
    taken = store.claim("k", "x", holder="b", now=100.0 + LEASE)  # expired: the holder died
    assert taken.claimed and taken.holder == "b" and taken.previous.holder == "a"
    assert not store.renew("k", holder="a", now=100.0 + LEASE + 1)  # the old holder learns it lost the run
    assert [x.holder for x in store.live_leases(now=101.0 + LEASE)] == ["b"]
    assert store.live_leases(now=100.0 + 2 * LEASE) == []  # expired leases are not live


def test_release_and_a_finished_row_free_the_run(store):
    assert store.claim("k", "x", holder="a", now=0.0).claimed
    store.release("k", holder="b")  # not b's to release
    assert not store.claim("k", "x", holder="b", now=1.0).claimed
    store.release("k", holder="a")
    assert store.claim("k", "x", holder="b", now=1.0).claimed  # at once, no expiry to wait for
    assert store.put(make_row("k")) is True  # the row ends the lease in its own transaction
    assert store.live_leases(now=2.0) == [] and store.has("k")
    assert store.put(make_row("j")) is True  # a row without a lease is written as before
    assert [r["run_key"] for r in store.rows()] == ["j", "k"]


def test_a_dead_local_holder_is_taken_over_at_once(store):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a process of this machine that no longer exists
    dead = leases.holder_id().rsplit(":", 2)
    dead = f"{dead[0]}:{proc.pid}:{dead[2]}"
    assert leases.dead_here(dead) and not leases.dead_here(leases.holder_id())
    assert not leases.dead_here(f"another-host:{proc.pid}:{dead.rsplit(':', 1)[1]}")  # elsewhere: wait for expiry
    assert store.claim("k", "x", holder=dead, now=0.0).claimed
    taken = store.claim("k", "x", now=1.0)
    assert taken.claimed and taken.previous.holder == dead and taken.holder == store.holder


def test_heartbeat_renews_in_its_own_thread_and_notices_a_takeover(location, monkeypatch):
    monkeypatch.setenv("DISTILBENCH_LEASE_S", "0.4")  # a beat every 0.1 s
    store = ResultsStore(location)
    assert store.claim("k", "x").claimed
    start = store.live_leases()[0].expires
    lost = []
    with store.heartbeat("k", on_lost=lambda: lost.append(1)) as beat:
        _until(lambda: beat.beats >= 2, "two renewals")
        renewed = store.live_leases()[0].expires
        assert renewed > start  # pushed forward by the beats
        # another worker takes the run (as if this one had stalled past its lease)
        assert store.claim("k", "x", holder="b", now=renewed).claimed
        _until(lambda: beat.lost, "the heartbeat to notice the lost lease")
    assert lost == [1] and not beat._thread.is_alive()
    store.close()


def _until(condition, what, limit=60.0):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def _claimer(location: str, name: str, barrier, results) -> None:
    try:
        store = ResultsStore(location)
        barrier.wait(timeout=60)
        results.put([k for k in (f"run-{i}" for i in range(60)) if store.claim(k, k, holder=name).claimed])
    except BaseException as exc:  # report instead of dying silently, so the parent fails fast
        results.put(repr(exc))


def test_two_concurrent_claimers_never_win_the_same_run(location):
    ResultsStore(location).close()  # the schema first (as the runner does), then the race on the claims
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(location, n, barrier, results)) for n in ("a", "b")]
    for p in procs:
        p.start()
    won = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(w, list) for w in won), won
    assert sorted(won[0] + won[1]) == sorted(f"run-{i}" for i in range(60))  # every run won exactly once
    assert not set(won[0]) & set(won[1])


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf"])
def test_a_bad_lease_length_is_refused_before_anything_opens(value, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILBENCH_LEASE_S", value)
    with pytest.raises(UsageError, match="DISTILBENCH_LEASE_S must be a positive number of seconds") as info:
        ResultsStore(tmp_path / "r.sqlite")
    assert "\n" not in str(info.value) and not (tmp_path / "r.sqlite").exists()


def test_an_existing_sqlite_store_opens_and_reads_unchanged(tmp_path):
    """A committed store (written before leases existed) keeps its bytes when a report reads it."""
    committed = sorted(REPO.glob("reports/*/results.sqlite"))
    if not committed:
        pytest.skip("no committed results store under reports/")
    def tables_of(db):
        with sqlite3.connect(db) as con:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    # prefer a store from before leases existed (stores written by a suite since have the table already)
    old = [p for p in committed if "leases" not in tables_of(p)] or committed
    path = tmp_path / "results.sqlite"
    shutil.copy(old[0], path)
    tables_before = tables_of(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with ResultsStore(path) as store:
        rows = store.rows()
        assert rows and store.live_leases() == []
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert tables_of(path) == tables_before  # reading adds nothing: the leases table comes with the first claim
    assert tables_before == {"runs", "meta"} or "leases" in tables_before

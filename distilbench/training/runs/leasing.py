"""Training one run under its lease (:mod:`distilbench.results.leases`): processes that share a results store never
train the same run twice, and a run whose holder died or stalled is taken over."""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable

from ...results.store import ResultsStore

STORED, DONE, HELD = "stored", "done", "held"  # what train_under_lease did with one run


def train_under_lease(store: ResultsStore, key: str, label: str, train: Callable[[], dict], *, force: bool, leased: bool,
                      writes: bool, log: Callable[[str], None], quiet: bool = False) -> str:
    """Train run ``key`` (``train()`` returns its row) and store the row when this process ``writes``, holding the
    run's lease meanwhile when ``leased``. Returns ``STORED``, ``DONE`` (its holder finished it first) or ``HELD``
    (another live worker is training it: skipped; said unless ``quiet``)."""
    if leased:
        claim = store.claim(key, label)
        if not claim.claimed:
            if not quiet:
                log(f"{label}: another worker ({claim.holder}) is training it; skipped for now")
            return HELD
        if claim.previous is not None:
            log(f"{label}: taking it over from {claim.previous.holder}, whose lease ran out or who died")
        if not force and store.has(key):  # its holder finished it between our check and our claim
            store.release(key)
            return DONE
    beat = nullcontext()
    if leased:
        beat = store.heartbeat(key, on_lost=lambda: log(
            f"[bold red]{label}: lost its lease to another worker (this one stalled past {store.lease_s:g} s); "
            "training goes on, and the first row written is kept[/]"),
            on_error=lambda exc: log(f"{label}: lease renewal failed ({type(exc).__name__}); retried at the next beat"))
    try:
        with beat:
            row = train()
            if writes:
                row["extra"]["worker"] = store.holder  # who trained it, for the record
                store.put(row, replace=force)  # ends the lease in the same transaction
    except BaseException:
        if leased:  # a failed or interrupted run: free it at once for the next worker or a rerun
            try:
                store.release(key)
            except Exception:  # noqa: BLE001 - the run's own error is the one to report; the lease expires
                pass
        raise
    return STORED


def wait_for_held(store: ResultsStore, held: list[Any], attempt: Callable[[Any, Any], str], label: Callable[[Any, Any], str],
                  log: Callable[[str], None]) -> None:
    """Wait for the (objective, seed) runs in ``held`` that other workers hold, so that this process's table and report
    include them: ``attempt(objective, seed)`` (train under the lease, quietly) returns ``HELD`` while another live
    worker has it; each run is either stored by its holder, or its lease runs out (the holder died) and it is trained
    here. Says which runs it waits for, and who holds them, whenever that changes."""
    said = None
    while held:
        held = [(o, s) for o, s in held if attempt(o, s) == HELD]
        if not held:
            break
        holders = {lease.label: lease.holder for lease in store.live_leases()}
        labels = [label(o, s) for o, s in held]
        message = (f"waiting for {len(held)} run(s) that other workers are training: "
                   + "; ".join(f"{lb} ({holders.get(lb, 'finishing')})" for lb in labels))
        if message != said:
            log(message)
            said = message
        time.sleep(min(5.0, store.lease_s / 4))

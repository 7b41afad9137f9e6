"""A run's training cost, at report time: its own training time plus its share of the work it reuses.

What each row records (``extra.profile.cost``) is written at run time by :mod:`distilbench.training.teachers.cost`.

**Shared out at report time** (:func:`training_costs`): each part's seconds are divided by the number of rows in the
report that list its id, so a row's cost is ``own_s + Σ_parts seconds / n_part``, and the costs of the report's rows
add up to the total time spent. It depends on which rows the report holds: a teacher reused by more runs costs
each of them less. A part whose seconds were never recorded (built before they were) counts 0 and marks the cost
incomplete (printed ``≥``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Cost:
    total_s: float  # own + shares
    own_s: float
    shared_s: float  # the sum of this row's shares
    complete: bool  # False: some shared part's seconds are unknown (counted 0)


def training_costs(rows: Iterable[dict]) -> dict[str, Cost]:
    """{run_key: Cost} of every row that stored its cost, each shared part divided among the rows listing it."""
    rows = [r for r in rows if _cost_of(r) is not None]
    users: dict[str, int] = {}
    seconds: dict[str, float | None] = {}
    for r in rows:
        for p in {p["id"]: p for p in _cost_of(r)["shared"]}.values():  # a part listed twice by one row counts once
            users[p["id"]] = users.get(p["id"], 0) + 1
            known = [s for s in (seconds.get(p["id"]), p.get("seconds")) if s is not None]
            seconds[p["id"]] = max(known) if known else None  # rows agree; max makes the choice order-free
    out = {}
    for r in rows:
        cost = _cost_of(r)
        ids = sorted({p["id"] for p in cost["shared"]})
        shares = [seconds[i] / users[i] for i in ids if seconds[i] is not None]
        own = float(cost["own_s"])
        out[str(r["run_key"])] = Cost(own + math.fsum(shares), own, math.fsum(shares),
                                      all(seconds[i] is not None for i in ids))
    return out


def _cost_of(row: dict) -> dict | None:
    extra = row.get("extra")
    profile = extra.get("profile") if isinstance(extra, dict) else None  # a dataframe gives NaN for a missing one
    cost = profile.get("cost") if isinstance(profile, dict) else None
    return cost if isinstance(cost, dict) and cost.get("own_s") is not None else None


__all__ = ["Cost", "training_costs"]

"""The signal check of a causal-LM cell: is the student's perplexity significantly **below** the perplexity of the
student trained without a teacher (``none``, same init, same seeds)? A language model has no majority class, so the
floor a distilled student must beat is the same student trained on the corpus alone.

Two one-sided tests, both at ``ALPHA``; a cell that does not pass both is marked :data:`MARK` and never ranked:

* over seeds: the paired t-test of ``perplexity(none) - perplexity(objective)`` per shared seed (greater than 0);
* over evaluation windows: a paired bootstrap of the per-window mean NLL (``extra.dev_predictions``, nats; the
  windows are the dev text's, in order, the same for both) of ``none`` minus the objective, averaged over the shared
  seeds and weighted by each window's scored tokens (``extra.dev_labels``); p = the share of resamples at or below 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .chance import ALPHA, SAMPLES, ChanceResult, seed_test

MARK = "not below none"
SEED = 20261201


@dataclass(frozen=True)
class BaselineCheck:
    seeds: int  # seeds shared with the none cell
    delta: float  # mean perplexity(none) - perplexity(objective) over the shared seeds (> 0: the objective is better)
    seed_p: float
    example_p: float | None  # None: per-window values missing
    reason: str = ""

    @property
    def below(self) -> bool | None:
        """True: significantly below none on both; False: not; None: not checked (no none cell, one seed)."""
        if self.seeds < 2 or math.isnan(self.seed_p):
            return None
        return self.seed_p < ALPHA and (self.example_p is None or self.example_p < ALPHA)


def window_test(none: Sequence[Sequence[float]], other: Sequence[Sequence[float]], tokens: Sequence[int],
                samples: int = SAMPLES, seed: int = SEED) -> float:
    """One-sided p that the token-weighted mean NLL of ``other`` is below ``none``'s (per-window values, one list per
    shared seed, paired by window), by a paired bootstrap over windows."""
    diff = np.mean(np.asarray(none, dtype=float) - np.asarray(other, dtype=float), axis=0)
    w = np.asarray(tokens, dtype=float)
    rng = np.random.RandomState(seed)
    idx = rng.randint(0, len(diff), size=(samples, len(diff)))
    stats = (diff[idx] * w[idx]).sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1)
    return float((np.sum(stats <= 0) + 1) / (samples + 1))


def check_against_none(rows: Sequence[Mapping], none_rows: Sequence[Mapping], samples: int = SAMPLES) -> BaselineCheck:
    """The signal check of one LM cell's rows against the ``none`` cell's rows (paired by seed)."""
    mine = {r["seed"]: r for r in rows}
    base = {r["seed"]: r for r in none_rows}
    shared = sorted(set(mine) & set(base))
    if not shared:
        return BaselineCheck(0, math.nan, math.nan, None, "no none student with the same seeds")
    gaps = [base[s]["score"] - mine[s]["score"] for s in shared]
    seed_p = seed_test(gaps, 0.0)
    preds = [(base[s].get("extra") or {}).get("dev_predictions") for s in shared], \
            [(mine[s].get("extra") or {}).get("dev_predictions") for s in shared]
    tokens = (mine[shared[0]].get("extra") or {}).get("dev_labels")
    example_p = None
    if tokens and all(p and len(p) == len(tokens) for p in preds[0] + preds[1]):
        example_p = window_test(preds[0], preds[1], tokens, samples)
    reason = "" if len(shared) > 1 else "one shared seed: no seed-level test"
    return BaselineCheck(len(shared), float(np.mean(gaps)), seed_p, example_p, reason)


def as_chance(rows: Sequence[Mapping], none_rows: Sequence[Mapping] | None):
    """A causal-LM cell's check against ``none`` in the form reports read (:class:`.chance.ChanceResult`): ``at_chance``
    True = not significantly below none (marked, never bold); the ``none`` cell itself (``none_rows`` None) is the
    baseline and is not checked."""
    mean = float(np.mean([r["score"] for r in rows])) if rows else math.nan
    if none_rows is None:
        return ChanceResult(False, math.nan, mean, math.nan, math.nan, None, "the baseline of the LM signal check")
    c = check_against_none(rows, none_rows)
    below = c.below
    return ChanceResult(True, math.nan, mean, c.seed_p, math.nan if c.example_p is None else c.example_p,
                        None if below is None else not below,
                        c.reason or f"against none: {MARK}" if below is False else c.reason)

"""An objective's candidates (AutoSKD's snapshots of θ), each retrained from a fresh student; the best on the
selection split is the run's result (dev is never read)."""
from __future__ import annotations

from typing import Any, Callable


def retrain_candidates(candidates: list, searched, objective, train_one: Callable, label: str,
                       new_student: Callable[[], Any], log: Callable[[str], None], main_score: str):
    """Retrain a fresh student (``new_student()``: the same seed and init) with each candidate and keep the best on
    the selection split: (that student, its result, carrying the search's epochs and the time of all of them)."""
    log(f"{label}: {len(candidates)} candidate(s) to retrain: " + "; ".join(
        "[" + ", ".join(f"{float(x):.3f}" for x in c) + "]" for c in candidates))
    spent, best = searched.train_time_s, None
    for k, candidate in enumerate(candidates):
        fresh = new_student()
        objective.use_candidate(k, candidate)  # hook
        r = train_one(fresh, f"{label} candidate {k + 1}/{len(candidates)}")
        objective.candidate_done(k, r.best_select_score)  # hook
        spent += r.train_time_s
        log(f"{label} candidate {k + 1}: selection {main_score} = {100 * r.best_select_score:.2f}")
        if best is None or r.best_select_score > best[0]:
            best = (r.best_select_score, fresh, r)
    _, student, chosen = best
    chosen.history = searched.history + chosen.history  # the search's epochs, then the chosen retrain's
    chosen.stage_times = {**{f"search-{k}": v for k, v in searched.stage_times.items()}, **chosen.stage_times}
    chosen.train_time_s = spent
    return student, chosen

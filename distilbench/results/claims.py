"""Claims as data, verdicts as code: what a paper claims about two cells, and the one rule that decides what our cells
say about it.

A suite declares its claims (``claims:`` in its YAML; :func:`parse_claims`): an id, the paper and table, the paper's
numbers, the cell claimed better and the cell claimed worse (by report label, optionally init and teacher), and whether
it is a distillation claim (then a teacher no better than the compared students cannot test it). :func:`evaluate`
pairs the cells on every task where both exist, runs the seed-level paired t-test, Holm-corrects the p-values over
every claim × task of the report at once (the family size is stated), and calls :func:`verdict`, the only place a
verdict is decided:

- **not testable**: a compared cell at chance (or not checkable), a cell whose objective read the first token of a
  mean-pooled model (:mod:`.pooling`), or, for a distillation claim, a teacher not better than both students;
- **reproduced** / **contradicted**: every compared cell above chance and the Holm-corrected seed-level p below 0.05,
  in the claimed / the opposite direction;
- **inconclusive** otherwise, with the smallest paired difference the design could detect.

A claim whose cells were computed by more than one version of the training path (:mod:`.revisions`) keeps its
verdict and is flagged beside it: the difference may be the code's.
The per-example bootstrap is shown beside a verdict ("examples agree / disagree / n.s."), never as one.

A claim tested on two or more tasks also gets an **across-task** verdict from the same rule: the tasks where it is
testable are combined by Stouffer's method, each task's two-sided seed-level t-test turned into a signed z
(z = sign(Δ) Φ⁻¹(1 − p/2)) and weighted by √n (scale-free: accuracy, correlation and MCC combine), Holm-corrected
over the report's across-task results (their own family); fewer than two testable tasks make it not testable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from .chance import detectable_difference
from .revisions import revision_flag
from .stats import holm, paired_test

ALPHA = 0.05
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not testable")
_SIDE_KEYS = ("label", "init", "teacher")
_KEYS = ("id", "paper", "claim", "paper_numbers", "better", "worse", "init", "tasks", "distillation")


@dataclass(frozen=True)
class Side:
    label: str
    init: str | None = None
    teacher: str | None = None

    def matches(self, cell) -> bool:
        return (cell.label == self.label and (self.init is None or cell.init == self.init)
                and (self.teacher is None or cell.teacher == self.teacher))

    def text(self) -> str:
        return self.label + (f" @ {self.init}" if self.init else "") + (f" ({self.teacher})" if self.teacher else "")


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str  # e.g. "001 Table 2"
    claim: str  # e.g. "TED beats LWD"
    paper_numbers: str
    better: Side
    worse: Side
    tasks: tuple[str, ...] = ()  # empty: every task where both cells exist
    distillation: bool = True  # a teacher not better than the compared students cannot test it

    def as_dict(self) -> dict[str, Any]:
        side = lambda s: {k: getattr(s, k) for k in _SIDE_KEYS if getattr(s, k) is not None}
        return {"id": self.id, "paper": self.paper, "claim": self.claim, "paper_numbers": self.paper_numbers,
                "better": side(self.better), "worse": side(self.worse), **({"tasks": list(self.tasks)} if self.tasks else {}),
                "distillation": self.distillation}


def _side(value: Any, init: Any, where: str) -> Side:
    if isinstance(value, str):
        value = {"label": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("label"), str) or not value["label"]:
        raise ValueError(f"{where}: give the cell as a report label, or a mapping with label (and init, teacher)")
    unknown = set(value) - set(_SIDE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; accepted: {', '.join(_SIDE_KEYS)}")
    return Side(str(value["label"]), str(value.get("init", init)) if value.get("init", init) else None,
                str(value["teacher"]) if value.get("teacher") else None)


def parse_claims(data: Any, source: str) -> list[Claim]:
    """A ``claims:`` list (plain YAML data) -> claims; anything malformed is one ValueError naming ``source``, the
    claim and what is accepted."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValueError(f"{source}: claims must be a list of mappings")
    out, seen = [], set()
    for i, item in enumerate(data):
        where = f"{source}: claim {i + 1}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: must be a mapping with {', '.join(_KEYS)}")
        unknown = set(item) - set(_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; accepted: {', '.join(_KEYS)}")
        missing = [k for k in ("id", "paper", "claim", "better", "worse") if not item.get(k)]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        cid = str(item["id"])
        if cid in seen:
            raise ValueError(f"{where}: id {cid!r} is used twice")
        seen.add(cid)
        tasks = item.get("tasks") or ()
        if isinstance(tasks, str) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"{where}: tasks must be a list of task names")
        distillation = item.get("distillation", True)
        if not isinstance(distillation, bool):
            raise ValueError(f"{where}: distillation must be true or false (got {distillation!r})")
        out.append(Claim(cid, str(item["paper"]), str(item["claim"]), str(item.get("paper_numbers") or ""),
                         _side(item["better"], item.get("init"), f"{where} better"),
                         _side(item["worse"], item.get("init"), f"{where} worse"), tuple(tasks), distillation))
    return out


# --------------------------------------------------------------------------- the rule
def verdict(*, not_testable: Sequence[str], n: int, diff: float, p_holm: float, detectable: float,
            revisions: Sequence[str] = ()) -> tuple[str, str]:
    """The verdict of one claim on one task, and why. ``not_testable``: reasons the cells cannot test the claim (at
    chance, first-token heads, a teacher no better than its students); ``diff``: better minus worse, in the direction
    where positive means the claim holds; ``p_holm``: the seed-level paired t-test's p, Holm-corrected over the
    report's whole family of claims; ``detectable``: the smallest paired difference the design could detect;
    ``revisions``: which code computed the two cells' rows (flagged in the reason when more than one)."""
    flag = revision_flag(revisions)
    flagged = f"; flagged: {flag}" if flag else ""
    if not_testable:
        return "not testable", "; ".join(not_testable) + flagged
    if n < 2 or math.isnan(p_holm):
        return "inconclusive", f"{n} paired seed(s): no seed-level test{flagged}"
    if p_holm < ALPHA:
        return ("reproduced" if diff > 0 else "contradicted"), f"Holm p {p_holm:.3g} < {ALPHA}{flagged}"
    size = f"; detectable over seeds: {detectable:.2f}" if math.isfinite(detectable) else ""
    return "inconclusive", f"Holm p {p_holm:.3g}{size}{flagged}"


# --------------------------------------------------------------------------- evaluation
ACROSS = "across tasks"


@dataclass
class ClaimResult:
    claim: Claim
    task: str  # a task name, or ACROSS (``tasks`` then names the tasks combined)
    better: Any = None  # stats.Cell, or None when missing
    worse: Any = None
    n: int = 0
    diff: float = math.nan  # better minus worse (sign flipped for a lower-is-better score): > 0 means the claim holds
    ci: tuple[float, float] = (math.nan, math.nan)
    p: float = math.nan
    p_holm: float = math.nan
    family_size: int = 0
    detectable: float = math.nan
    examples: str = "n/a"  # the per-example bootstrap beside the verdict: examples agree | disagree | n.s. | n/a
    verdict: str = "not testable"
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    tasks: tuple[str, ...] = ()  # across-task results: the tasks combined
    revisions: tuple[str, ...] = ()  # across-task results: which code computed the combined cells

    @property
    def across(self) -> bool:
        return self.task == ACROSS


def _not_testable(claim: Claim, a, b) -> list[str]:
    why = []
    for cell in (a, b):
        if cell.chance is not None and cell.chance.unranked:
            word = "at chance" if cell.higher_is_better else "not below none"
            why.append(f"{cell.label} {word if cell.chance.at_chance else 'not checkable (one seed, no predictions)'}")
        if getattr(cell, "pooling_caveat", None):
            why.append(f"{cell.label}: first-token heads on a mean-pooled model")
    teachers = a.teacher_scores + b.teacher_scores
    if claim.distillation and teachers:  # a student at or above its teacher learnt nothing the teacher could give
        teacher = min(teachers) if a.higher_is_better else max(teachers)
        means = [c.stats["mean"] for c in (a, b)]
        worse_than = (teacher <= max(means)) if a.higher_is_better else (teacher >= min(means))
        if worse_than:
            why.append(f"teacher ({teacher:.2f}) not better than its students")
    return list(dict.fromkeys(why))  # two cells with one label (an init claim) say it once


def _examples(a, b, example_comparisons: Sequence, sign: float) -> str:
    for e in example_comparisons:
        pair = {e.a_config_hash, e.b_config_hash}
        if e.task != a.task or pair != {a.config_hash, b.config_hash}:
            continue
        if math.isnan(e.holm_p):
            return "n/a"
        if e.holm_p >= ALPHA:
            return "examples n.s."
        d = e.result.diff * (1 if e.a_config_hash == a.config_hash else -1) * sign
        return "examples agree" if d > 0 else "examples disagree"
    return "n/a"


def evaluate(claims: Sequence[Claim], cells: Sequence, example_comparisons: Sequence = ()) -> list[ClaimResult]:
    """Every claim on every task where its cells exist (a claim with no such task gets one 'not testable' result
    saying which cell is missing); p-values Holm-corrected over all of them together."""
    results: list[ClaimResult] = []
    for claim in claims:
        tasks = list(claim.tasks) or sorted({c.task for c in cells if claim.better.matches(c)})
        if not tasks:
            results.append(ClaimResult(claim, "-", reason=f"no cell labelled {claim.better.text()}"))
            continue
        for task in tasks:
            a = [c for c in cells if c.task == task and claim.better.matches(c)]
            b = [c for c in cells if c.task == task and claim.worse.matches(c)]
            if len(a) != 1 or len(b) != 1:
                side = claim.better if len(a) != 1 else claim.worse
                n_found = len(a) if len(a) != 1 else len(b)
                results.append(ClaimResult(claim, task, reason=f"{n_found} cells labelled {side.text()} on {task}; "
                                                                "name init/teacher to pick one"))
                continue
            a, b = a[0], b[0]
            sign = 1.0 if a.higher_is_better else -1.0
            paired = paired_test(a.scores, b.scores)
            seeds = sorted(set(a.scores) & set(b.scores))
            d = np.array([a.scores[s] - b.scores[s] for s in seeds], dtype=float)
            detectable = detectable_difference(float(np.std(d, ddof=1)), len(d)) if len(d) >= 2 else math.nan
            r = ClaimResult(claim, task, a, b, paired.n, sign * paired.mean_diff,
                            tuple(sorted((sign * paired.ci_low, sign * paired.ci_high))), paired.t_p, detectable=detectable)
            r.notes = _not_testable(claim, a, b)
            r.examples = _examples(a, b, example_comparisons, sign)
            results.append(r)
    tested = [r for r in results if r.better is not None]
    for r, adjusted in zip(tested, holm([r.p for r in tested])):
        r.p_holm = adjusted
    size = sum(1 for r in tested if not math.isnan(r.p))
    for r in results:
        r.family_size = size
        if r.better is None:
            r.verdict = "not testable"
            continue
        r.verdict, r.reason = verdict(not_testable=r.notes, n=r.n, diff=r.diff, p_holm=r.p_holm, detectable=r.detectable,
                                      revisions=tuple(r.better.revisions) + tuple(r.worse.revisions))
    return _with_across(claims, results)


def stouffer(diffs: Sequence[float], pvalues: Sequence[float], ns: Sequence[int]) -> float:
    """Two-sided p of Stouffer's weighted Z over independent tests: each two-sided p turned into a z signed by its
    difference, weights √n."""
    z = [math.copysign(float(stats.norm.isf(max(p, 1e-300) / 2)), d) if d != 0 else 0.0 for d, p in zip(diffs, pvalues)]
    w = [math.sqrt(n) for n in ns]
    combined = sum(wi * zi for wi, zi in zip(w, z)) / math.sqrt(sum(wi * wi for wi in w))
    return float(2 * stats.norm.sf(abs(combined)))


def _with_across(claims: Sequence[Claim], results: list[ClaimResult]) -> list[ClaimResult]:
    """Each claim's per-task results, then its across-task result when it was tested on two or more tasks."""
    out, across = [], []
    for claim in claims:
        mine = [r for r in results if r.claim is claim]
        out += mine
        tested = [r for r in mine if r.better is not None]
        if len(tested) < 2:
            continue
        usable = [r for r in tested if not r.notes and r.n >= 2 and not math.isnan(r.p)]
        a = ClaimResult(claim, ACROSS, n=sum(r.n for r in usable), tasks=tuple(r.task for r in usable))
        a.diff = float(np.mean([r.diff for r in usable])) if usable else math.nan
        if len(usable) >= 2:
            a.p = stouffer([r.diff for r in usable], [r.p for r in usable], [r.n for r in usable])
        else:
            a.notes = [f"{len(usable)} of {len(tested)} tasks testable: nothing to combine"]
        a.revisions = tuple(sorted({v for r in usable for c in (r.better, r.worse) for v in c.revisions}))
        out.append(a)
        across.append(a)
    for a, adjusted in zip(across, holm([a.p for a in across])):
        a.p_holm = adjusted
    size = sum(1 for a in across if not math.isnan(a.p))
    for a in across:
        a.family_size = size
        a.verdict, a.reason = verdict(not_testable=a.notes, n=a.n, diff=a.diff, p_holm=a.p_holm,
                                      detectable=math.nan, revisions=a.revisions)
        if a.tasks and not a.notes:
            a.reason += f"; Stouffer over {', '.join(a.tasks)}"
    return out

"""Statistics on stored results: cells, paired tests over seeds, Holm–Bonferroni. Pure functions, no I/O.

**Cell.** All rows of one (task, objective, init, teacher, student, config_hash), i.e. one configuration run with
several seeds (``config_hash`` is the hash of the run identity without the seed). A cell has a mean, a standard
deviation (ddof=1), a 95% confidence interval of the mean from the t distribution, and its seeds.

**Comparisons** are paired by seed: seed *k* gave both sides the same data order, selection split and student init,
so the test is on the per-seed differences. Two families are compared (paper 002 §Significance):

* ``objectives``: every pair of cells with the same task, teacher, init, student and *setting* (the run identity
  without objective, objective version, objective parameters, a multi-teacher objective's team and seed: same
  hyper-parameters, teacher weights, data, precision: a bf16 cell is never paired with an fp32 one).
  ``none`` and ``kd`` are cells like any other, so every objective is compared with both.
* ``inits``: every pair of cells with the same task, teacher, objective (name, version and parameters) and setting,
  differing only in the student initialisation (paper 002 Table 3).

**Seed sets that differ are never paired.** :func:`paired_test` does not pair on the intersection: it returns a
result with ``mismatched_seeds=True``, every statistic NaN and a ``reason``; such pairs stay out of the Holm family
and reports print them as "seeds differ". (Pairing on the intersection would silently test other runs than the
table's means describe.)

**Multiple comparisons.** Holm–Bonferroni (:func:`holm`) over the t-test p-values of one family = one significance
matrix (one task, one teacher/init/setting for objectives; one task/teacher/objective/setting for inits). The
Wilcoxon signed-rank p-values are reported uncorrected beside them; with fewer than 6 seeds its exact two-sided
p-value can never fall below 0.05 (n=3: 0.25, n=4: 0.125, n=5: 0.0625).

**Per-example tests** (paired bootstrap over dev examples, McNemar per seed) live in :mod:`distilbench.results.per_example`
and run on the per-example dev predictions and labels each student row stores (``extra.dev_predictions``,
``extra.dev_labels``): ``distilbench report --per-example``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from ..data.tasks import get_task
from ..errors import UsageError
from ..hashing import stable_hash
from .rows import CELL_KEYS, is_result, rows_by_cell  # noqa: F401 - CELL_KEYS, is_result: re-exported

CONFIDENCE = 0.95
# parts of the run identity that make a cell's setting: everything except these
# (a multi-teacher objective's team is part of that objective, as its parameters are: AutoSKD and AvgKD are compared
# with single-teacher KD and with none, whose identities hold no team)
_OBJECTIVE_PARTS = ("objective", "objective_version", "objective_params", "team", "seed")
_INIT_PARTS = ("init", "student", "student_weights", "seed")
# parts of the identity that tell two cells of one (task, teacher, init, student, objective) apart in a label
_TASK_PARTS = ("task", "task_version", "dev", "teacher_key", "seed", "objective", "init", "student", "teacher")
ROUND_DIFF = 10  # per-seed differences are rounded to 1e-10: float noise must not split ties or fake variance


def _hash(obj: Any) -> str:
    return stable_hash(obj, 12)


# --------------------------------------------------------------------------- numbers


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided t confidence interval of the mean; (nan, nan) for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def describe(values: Sequence[float]) -> dict[str, float]:
    """n, mean, std (ddof=1) and the 95% t interval of the mean of one cell's per-seed scores."""
    x = np.asarray(values, dtype=float)
    low, high = t_interval(x)
    return {"n": len(x), "mean": float(x.mean()) if len(x) else math.nan,
            "std": float(x.std(ddof=1)) if len(x) > 1 else math.nan, "ci_low": low, "ci_high": high}


@dataclass(frozen=True)
class PairedResult:
    """``a`` minus ``b`` over the seeds both ran. NaN fields carry a ``reason``."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t_p: float
    wilcoxon_p: float
    mismatched_seeds: bool = False
    reason: str = ""


def paired_test(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> PairedResult:
    """Paired comparison of two cells given as {seed: score}.

    Mean of the per-seed differences a-b, its t confidence interval, the paired t-test p (``scipy.stats.ttest_rel``)
    and the Wilcoxon signed-rank p (``scipy.stats.wilcoxon``, scipy's defaults: zero differences dropped, exact
    distribution for small n), both two-sided.

    Degenerate cases, never a crash: different seed sets -> ``mismatched_seeds=True`` and no statistic at all;
    n < 2 -> NaN p-values and CI; every difference zero -> p = 1.0 for both tests; all differences equal and
    non-zero -> t p = 0.0 (the limit of an infinite t; noted in ``reason``).
    """
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan, math.nan, True,
                            f"seed sets differ (only in a: {only_a}, only in b: {only_b})")
    seeds = sorted(a)
    n = len(seeds)
    if n == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan, math.nan, False, "no seeds")
    d = np.round(np.array([a[s] for s in seeds], dtype=float) - np.array([b[s] for s in seeds], dtype=float), ROUND_DIFF)
    mean = float(d.mean())
    if n < 2:
        return PairedResult(n, mean, math.nan, math.nan, math.nan, math.nan, False, "n < 2: no test")
    if not d.any():
        return PairedResult(n, 0.0, 0.0, 0.0, 1.0, 1.0, False, "all differences are zero")
    low, high = t_interval(d, confidence)
    wilcoxon_p = float(stats.wilcoxon(d).pvalue)
    if np.all(d == d[0]):
        return PairedResult(n, mean, mean, mean, 0.0, wilcoxon_p, False,
                            "all differences are equal: zero variance, t is infinite")
    t_p = float(stats.ttest_rel(d, np.zeros(n)).pvalue)
    return PairedResult(n, mean, low, high, t_p, wilcoxon_p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order: the i-th smallest of m is multiplied by m-i+1, then a
    running maximum keeps them monotone, capped at 1. NaN entries stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    idx = [i for i in np.argsort(p, kind="stable") if not math.isnan(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(x) for x in out]


# --------------------------------------------------------------------------- cells from store rows


@dataclass(frozen=True)
class Cell:
    task: str
    objective: str
    init: str
    teacher: str
    student: str
    config_hash: str
    label: str  # the objective, plus what tells it apart from another cell of the same objective (see label_cells)
    setting: str  # hash of the identity without objective parts: objective comparisons stay within one setting
    init_setting: str  # hash of the identity without init parts: init comparisons stay within one
    main_score: str
    higher_is_better: bool
    scores: dict[int, float] = field(hash=False)  # seed -> score (scaled)
    teacher_scores: tuple[float, ...] = ()  # distinct teacher dev scores of the rows (scaled)
    # set by the report (dataclasses.replace): the signal check (distilbench.results.chance.ChanceResult) and the settings
    # that differ from the defaults ({name: value}), from the cell's rows
    chance: Any = field(default=None, hash=False, compare=False)
    settings: tuple[tuple[str, str], ...] = field(default=(), hash=False, compare=False)
    # set by the report: why the cell cannot test a claim about its objective, from its rows (results.pooling), or None
    pooling_caveat: str | None = field(default=None, hash=False, compare=False)
    # set by the report: which code computed the cell's rows (results.revisions.revisions)
    revisions: tuple[str, ...] = field(default=(), hash=False, compare=False)

    @property
    def unranked(self) -> bool:
        """Never bold "best": at chance, or a classification cell that could not be checked."""
        return bool(self.chance is not None and self.chance.unranked)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.scores)

    @property
    def stats(self) -> dict[str, float]:
        return describe([self.scores[s] for s in self.seeds])

    @property
    def key(self) -> tuple[str, ...]:
        return (self.task, self.objective, self.init, self.teacher, self.student, self.config_hash)


def _flat(params: Mapping[str, Any]) -> dict[str, Any]:
    """The run identity flattened to name -> value (``hparams.epochs`` -> ``epochs``, ``objective_version`` -> ``v``).
    An identity without ``precision`` is fp32's (fp32 is left out of it), so two precisions of one objective are
    labelled ``[precision=bf16]`` and ``[precision=fp32]``; likewise an identity without ``pooling`` is a first-token
    head's (``[pooling=cls]`` beside ``[pooling=mean]``; per-token tasks never differ in it)."""
    out: dict[str, Any] = {"precision": "fp32", "pooling": "cls"}
    for k, v in params.items():
        if k in ("hparams", "objective_params") and isinstance(v, Mapping):
            out.update(v)
        else:
            out["v" if k == "objective_version" else k] = v
    return out


@dataclass(frozen=True)
class TaskInfo:
    """What a report needs to know of a task: its metric names, its main score and which way is better."""

    metrics: list[str]
    main_score: str | None  # None: neither the registry nor the row says (each caller has its own default)
    higher_is_better: bool
    percent: bool = True  # scores are shares, shown × 100; False: natural units (perplexity)


def task_info(task: str, row: Mapping[str, Any]) -> TaskInfo:
    """The registry's :class:`TaskInfo` of ``task``; for a task that is no longer registered, what ``row`` stored (its
    metric names, ``extra.main_score``), higher taken as better."""
    try:
        t = get_task(task)
        return TaskInfo(list(t.metrics), t.main_score, t.higher_is_better, t.percent)
    except UsageError:  # a task that is no longer registered: the row still says what its score was
        metrics = row.get("metrics")
        stored = [k for k in (metrics if isinstance(metrics, Mapping) else {}) if k not in ("score", "combined")]
        main = (row.get("extra") or {}).get("main_score")
        return TaskInfo(stored, str(main) if main else None, True)


def cells_from_rows(rows: Any, scale: float = 100.0) -> list[Cell]:
    """Group student rows into cells (sorted by task, objective, init, teacher, student, config_hash), scores ×
    ``scale`` (100: the percentages of the tables). Rows without a score and non-student rows are ignored; two rows
    of one cell with the same seed are refused (the store's keys make that impossible unless rows were edited)."""
    groups = rows_by_cell(rows)
    raw = []
    for key in sorted(groups):
        members = groups[key]
        info = task_info(key[0], members[0])
        unit = scale if info.percent else 1.0  # perplexity stays in its own units
        scores: dict[int, float] = {}
        for r in members:
            seed = int(r["seed"])
            if seed in scores:
                raise ValueError(f"cell {key} has two rows for seed {seed}")
            scores[seed] = float(r["score"]) * unit
        params = members[0].get("params") or {}
        setting = _hash({k: v for k, v in params.items() if k not in _OBJECTIVE_PARTS}) if params else ""
        init_setting = _hash({k: v for k, v in params.items() if k not in _INIT_PARTS}) if params else ""
        teacher_scores = tuple(sorted({float(r["teacher_score"]) * unit for r in members
                                       if r.get("teacher_score") is not None}))
        main_score, hib = info.main_score or "score", info.higher_is_better
        raw.append((key, setting, init_setting, main_score, hib, scores, teacher_scores, _flat(params)))
    labels = label_cells([(k[0], k[1], k[2], k[3], k[4], flat) for k, *_, flat in raw])
    slots: dict[tuple, int] = {}
    for (key, *_), label in zip(raw, labels):
        slot = (key[0], key[2], key[3], key[4], label)
        slots[slot] = slots.get(slot, 0) + 1
    labels = [label + (f" [config {key[5][:8]}]" if slots[(key[0], key[2], key[3], key[4], label)] > 1 else "")
              for (key, *_), label in zip(raw, labels)]  # identities that differ only in task-level parts
    return [Cell(*key, label=label, setting=setting, init_setting=init_setting, main_score=ms, higher_is_better=hib,
                 scores=scores, teacher_scores=ts)
            for (key, setting, init_setting, ms, hib, scores, ts, _), label in zip(raw, labels)]


def _fmt_value(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)


def label_cells(cells: Sequence[tuple[str, str, str, str, str, Mapping[str, Any]]]) -> list[str]:
    """Row label per cell given (task, objective, init, teacher, student, flat identity): the objective name, plus
    ``[k=v, ...]`` naming the identity entries that differ between cells of the same objective, task, init, teacher
    and student (e.g. two temperatures of ``kd``). The keys are gathered over every task, init and teacher of that
    objective, so one configuration gets the same label in every column of every table."""
    differing: dict[str, set[str]] = {}
    by_slot: dict[tuple, list[Mapping[str, Any]]] = {}
    for task, objective, init, teacher, student, flat in cells:
        by_slot.setdefault((task, objective, init, teacher, student), []).append(flat)
    for (task, objective, init, teacher, student), flats in by_slot.items():
        keys = differing.setdefault(objective, set())
        if len(flats) > 1:
            names = sorted({k for f in flats for k in f} - set(_TASK_PARTS) - set(_INIT_PARTS))
            keys.update(k for k in names if len({_fmt_value(f.get(k)) for f in flats}) > 1)
    labels = []
    for task, objective, init, teacher, student, flat in cells:
        keys = sorted(differing.get(objective, ()))
        labels.append(objective + (f" [{', '.join(f'{k}={_fmt_value(flat.get(k))}' for k in keys)}]" if keys else ""))
    return labels


# --------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    kind: str  # "objectives" | "inits"
    family: str  # one Holm family = one significance matrix
    task: str
    a: str  # row: an objective label (kind objectives) or an init (kind inits)
    b: str
    a_cell: Cell = field(repr=False)
    b_cell: Cell = field(repr=False)
    result: PairedResult
    holm_p: float


def objective_order(labels: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """Deterministic order of objective labels: by ``preferred`` objective names first (a suite's order), then
    ``none``, ``kd``, then alphabetical; labels of one objective by their full text."""
    preferred = list(preferred)

    def key(label: str) -> tuple:
        base = label.split(" [")[0]
        rank = preferred.index(base) if base in preferred else len(preferred)
        return rank, {"none": 0, "kd": 1}.get(base, 2), base, label

    return sorted(set(labels), key=key)


def natural_key(text: str) -> list:
    """"layers:4,8,12" after "layers:1,8,12" and "layers:10,11,12" after both: numbers compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _family(kind: str, cells: list[Cell]) -> str:
    c = cells[0]
    if kind == "objectives":
        return f"{c.task} | teacher {c.teacher} | init {c.init} | student {c.student} | setting {c.setting}"
    return f"{c.task} | teacher {c.teacher} | {c.label} | setting {c.init_setting}"


def families(cells: Sequence[Cell], kind: str) -> list[tuple[str, list[Cell]]]:
    """The groups compared pairwise: (family name, cells in comparison order), sorted by family name.
    Objective families need at least two objectives, init families at least two inits."""
    if kind not in ("objectives", "inits"):
        raise ValueError(f"kind must be objectives or inits (got {kind!r})")
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        key = ((c.task, c.teacher, c.init, c.student, c.setting) if kind == "objectives"
               else (c.task, c.teacher, c.objective, c.init_setting))
        groups.setdefault(key, []).append(c)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        if kind == "objectives":
            order = objective_order(c.label for c in members)
            members = sorted(members, key=lambda c: order.index(c.label))
        else:
            members = sorted(members, key=lambda c: (natural_key(c.init), c.student, c.config_hash))
        out.append((_family(kind, members), members))
    return sorted(out, key=lambda x: x[0])


def init_order(inits: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """Deterministic order of init specs: ``preferred`` first (a suite's order), then natural order."""
    preferred = list(preferred)
    return sorted(set(inits), key=lambda i: (preferred.index(i) if i in preferred else len(preferred), natural_key(i)))


def by_family(items: Iterable[Any], kind: str | None = None) -> dict[str, list]:
    """Comparisons (anything with ``.family``; of one ``kind`` when given) grouped by family, in input order."""
    out: dict[str, list] = {}
    for x in items:
        if kind is None or x.kind == kind:
            out.setdefault(x.family, []).append(x)
    return out


def compare(cells: Sequence[Cell], kind: str = "objectives", order: Sequence[str] = ()) -> list[Comparison]:
    """Every pair within each family (a before b in the family's order), Holm-adjusted within the family.
    ``order``: preferred objective names (kind objectives) or init specs (kind inits), e.g. a suite's."""
    out: list[Comparison] = []
    for family, members in families(cells, kind):
        if kind == "objectives":
            ranked = objective_order((c.label for c in members), order)
            members = sorted(members, key=lambda c: ranked.index(c.label))
        else:
            ranked = init_order((c.init for c in members), order)
            members = sorted(members, key=lambda c: (ranked.index(c.init), c.student, c.config_hash))
        pairs = [(x, y) for i, x in enumerate(members) for y in members[i + 1:]]
        results = [paired_test(x.scores, y.scores) for x, y in pairs]
        adjusted = holm([r.t_p for r in results])
        for (x, y), r, h in zip(pairs, results, adjusted):
            name = (lambda c: c.label) if kind == "objectives" else (lambda c: c.init)
            out.append(Comparison(kind, family, x.task, name(x), name(y), x, y, r, h))
    return out

"""What distillation buys, in the report: each cell's size, speed and training cost beside its score.

Read from each row's ``extra.profile``, written at run time (:mod:`distilbench.training.runs.profile` for sizes, latencies and
the retained share; :mod:`distilbench.results.cost` for the training cost); nothing is measured here, so a report rebuilds
the same from the same store. Per cell, a quantity is the mean over the cell's rows that stored it (size and latency
are those of one architecture on one machine, the same in every row; the cost is not). A cell none of whose rows
stored a profile (runs from before it was recorded) reads ``n/a``.

- :func:`size_speed_grid`: beside each score table of §1, per cell: parameters (with and without embeddings), size,
  latency at batch 1 and 32 and throughput (CPU; GPU too where measured), speed-up and size ratio against the
  teacher, retained share, training cost per run; and the teacher's own row per task.
- :func:`pareto_points` and :func:`plot_pareto`: per task, score against CPU batch-1 latency and score against
  training cost per run, every cell and the teacher a labelled point, the Pareto front drawn (§4).
- :data:`CSV_HEADER`: the columns appended to ``cells.csv`` (:func:`csv_values`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..results.cost import training_costs
from ..results.rows import rows_by_cell

BATCHES = ("b1", "b32")
DEVICES = ("cpu", "cuda")
NA = "n/a"

CSV_HEADER = ["params", "params_no_embeddings", "size_bytes",
              "latency_b1_ms", "latency_b32_ms", "throughput_b1", "throughput_b32", "speedup_b1", "speedup_b32",
              "gpu_latency_b1_ms", "gpu_latency_b32_ms", "gpu_throughput_b1", "gpu_throughput_b32", "gpu_speedup_b1",
              "gpu_speedup_b32", "size_ratio", "retained_pct", "train_cost_s", "train_own_s", "train_shared_s",
              "train_cost_complete", "profile_runs", "profile_threads", "profile_cpu", "profile_gpu"]

DEFINITIONS = (
    "Measured when each run finished and stored with it (`distilbench.training.runs.profile`, "
    "`distilbench.training.teachers.cost`); per cell, the mean over its runs. **Params**: all parameters, and without the embedding "
    "tables (`nn.Embedding`); **MB**: bytes of the weights as one safetensors file / 10^6. **ms**: median forward "
    "time of a batch of 1 or 32 sequences of 128 tokens (`torch.inference_mode`, in the weights' dtype, after a warm-up), on the CPU "
    "with the runs' thread count (and on the GPU where one was present); **ex/s**: batch × 1000 / ms. **Speed-up**: "
    "teacher ms / student ms; **size ratio**: teacher bytes / student bytes. **Retained**: student score / teacher "
    "score on the main score, in % (teacher / student for a lower-is-better score; n/a when the denominator is not "
    "above 0). **Train cost**: seconds per run: the run's own training time plus, for each thing it reused (the "
    "teacher's fine-tuning, the teacher's logits and output caches, TED's Stage I), that thing's seconds divided by "
    "the number of runs in this report that used it; `≥`: some reused part's time was not recorded (counted 0). "
    "The teacher row's cost is its whole fine-tuning.")


@dataclass(frozen=True)
class CellProfile:
    """One cell's means over its profiled rows (None: no row stored that value)."""

    runs: int
    params: float | None = None
    params_no_embeddings: float | None = None
    size_bytes: float | None = None
    latency: dict = field(default_factory=dict)  # (device, batch) -> ms
    throughput: dict = field(default_factory=dict)  # (device, batch) -> examples/s
    speedup: dict = field(default_factory=dict)  # (device, batch) -> teacher ms / student ms
    size_ratio: float | None = None
    retained: float | None = None  # %
    cost: float | None = None  # seconds per run: own + shares
    own: float | None = None
    shared: float | None = None
    complete: bool | None = None
    teacher: dict = field(default_factory=dict)  # the teacher's params, size_bytes, latency, throughput, train_s
    multi_teacher: bool = False
    threads: tuple[int, ...] = ()
    cpus: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()


def _mean(values) -> float | None:
    found = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return math.fsum(found) / len(found) if found else None


def _profile(row: dict) -> dict | None:
    extra = row.get("extra")
    profile = extra.get("profile") if isinstance(extra, dict) else None  # a dataframe holds NaN for a missing one
    return profile if isinstance(profile, dict) else None


def _model_means(models: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {k: _mean(m.get(k) for m in models) for k in ("params", "params_no_embeddings", "size_bytes")}
    out["latency"], out["throughput"] = {}, {}
    for device in DEVICES:
        for b in BATCHES:
            runs = [((m.get("latency") or {}).get(device) or {}).get(b) or {} for m in models]
            ms, per_s = _mean(r.get("ms") for r in runs), _mean(r.get("per_s") for r in runs)
            if ms is not None:
                out["latency"][(device, b)] = ms
            if per_s is not None:
                out["throughput"][(device, b)] = per_s
    return out


def _teacher_seconds(profile: dict, teacher_key: str | None) -> float | None:
    """The fine-tuning seconds of the row's own teacher (not a team member's): its part's folder ends with its key."""
    for p in (profile.get("cost") or {}).get("shared", ()):
        if p.get("kind") == "teacher" and teacher_key and str(p.get("id", "")).endswith(str(teacher_key)):
            return p.get("seconds")
    return None


def cell_profiles(cells, rows: Sequence[dict]) -> dict[tuple, CellProfile]:
    """{cell key: CellProfile} for every cell (``runs`` 0 where no row stored a profile)."""
    costs = training_costs(rows)
    by = rows_by_cell(rows)
    out = {}
    for c in cells:
        members = sorted(by.get(c.key, []), key=lambda r: int(r["seed"]))
        found = [(r, p) for r in members if (p := _profile(r)) is not None]
        if not found:
            out[c.key] = CellProfile(0)
            continue
        students = [p.get("student") or {} for _, p in found]
        teachers = [p.get("teacher") or {} for _, p in found]
        student, teacher = _model_means(students), _model_means(teachers)
        teacher["train_s"] = _mean(_teacher_seconds(p, (r.get("extra") or {}).get("teacher_key")) for r, p in found)
        speedup = {}
        for device in DEVICES:
            for b in BATCHES:
                x = _mean(((p.get("speedup") or {}).get(device) or {}).get(b) for _, p in found)
                if x is not None:
                    speedup[(device, b)] = x
        retained = _mean(p.get("retained") for _, p in found)
        run_costs = [costs[str(r["run_key"])] for r, _ in found if str(r.get("run_key")) in costs]
        lat = [((m.get("latency") or {}).get("cpu") or {}) for m in students]
        gpu = [((m.get("latency") or {}).get("cuda") or {}) for m in students]
        out[c.key] = CellProfile(
            len(found), student["params"], student["params_no_embeddings"], student["size_bytes"], student["latency"],
            student["throughput"], speedup, _mean(p.get("size_ratio") for _, p in found),
            100 * retained if retained is not None else None,
            _mean(x.total_s for x in run_costs), _mean(x.own_s for x in run_costs), _mean(x.shared_s for x in run_costs),
            all(x.complete for x in run_costs) if run_costs else None, teacher,
            any((r.get("extra") or {}).get("team") for r, _ in found),
            tuple(sorted({int(x["threads"]) for x in lat if x.get("threads") is not None})),
            tuple(sorted({str(x["device_name"]) for x in lat if x.get("device_name")})),
            tuple(sorted({str(x["device_name"]) for x in gpu if x.get("device_name")})))
    return out


# --------------------------------------------------------------------------- text


def _fmt(x: float | None, digits: int) -> str:
    if x is None or math.isnan(x):
        return NA
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _csv(x: float | None, digits: int = 4) -> str:
    return "" if x is None or math.isnan(x) else _fmt(x, digits)


def _int(x: float | None) -> str:
    return "" if x is None else str(int(round(x)))


def _cost_text(p: CellProfile) -> str:
    return NA if p.cost is None else ("≥ " if p.complete is False else "") + _fmt(p.cost, 0)


def size_speed_grid(cells, profiles: dict[tuple, CellProfile], tasks: Sequence[str], labels: Sequence[str]):
    """(header, rows, notes) of the size/speed/cost table of one score table's cells, tasks × objective labels, each
    task closed by its teacher's row; None when no cell stored a profile."""
    if not any(profiles[c.key].runs for c in cells):
        return None
    gpu = any(k[0] == "cuda" for c in cells for k in profiles[c.key].latency)
    header = ["Objective", "Task", "Params (M)", "w/o emb. (M)", "Size (MB)", "CPU b1 (ms)", "CPU b32 (ms)",
              "CPU b32 (ex/s)", "Speed-up b1", "Speed-up b32"]
    header += ["GPU b1 (ms)", "GPU b32 (ms)", "GPU b32 (ex/s)", "GPU speed-up b1", "GPU speed-up b32"] if gpu else []
    header += ["Size ratio", "Retained (%)", "Train cost (s/run)"]
    by = {(c.label, c.task): c for c in cells}
    rows = []

    def speed(values: dict, device: str, digits: int = 1) -> list[str]:
        return [_fmt(values["latency"].get((device, "b1")), digits), _fmt(values["latency"].get((device, "b32")), digits),
                _fmt(values["throughput"].get((device, "b32")), 1)]

    for task in tasks:
        task_cells = [by[(lb, task)] for lb in labels if (lb, task) in by]
        for c in task_cells:
            p = profiles[c.key]
            v = {"latency": p.latency, "throughput": p.throughput}
            row = [c.label, task, _fmt(_m(p.params), 2), _fmt(_m(p.params_no_embeddings), 2), _fmt(_m(p.size_bytes), 1),
                   *speed(v, "cpu"), _fmt(p.speedup.get(("cpu", "b1")), 2), _fmt(p.speedup.get(("cpu", "b32")), 2)]
            if gpu:
                row += [*speed(v, "cuda", 2), _fmt(p.speedup.get(("cuda", "b1")), 2), _fmt(p.speedup.get(("cuda", "b32")), 2)]
            rows.append(row + [_fmt(p.size_ratio, 2), _fmt(p.retained, 1), _cost_text(p)])
        teachers = [profiles[c.key].teacher for c in task_cells if profiles[c.key].runs and not profiles[c.key].multi_teacher]
        if teachers:
            t = {"latency": _mean_dicts([x["latency"] for x in teachers]),
                 "throughput": _mean_dicts([x["throughput"] for x in teachers])}
            row = ["teacher", task, _fmt(_m(_mean(x["params"] for x in teachers)), 2),
                   _fmt(_m(_mean(x["params_no_embeddings"] for x in teachers)), 2),
                   _fmt(_m(_mean(x["size_bytes"] for x in teachers)), 1), *speed(t, "cpu"), "1.00", "1.00"]
            if gpu:
                on_gpu = t["latency"].get(("cuda", "b1")) is not None
                row += [*speed(t, "cuda", 2), *(["1.00", "1.00"] if on_gpu else [NA, NA])]
            rows.append(row + ["1.00", "100.0", _fmt(_mean(x["train_s"] for x in teachers), 0)])
    notes = []
    machines = sorted({(cpu, threads) for c in cells for cpu in profiles[c.key].cpus for threads in profiles[c.key].threads})
    gpus = sorted({g for c in cells for g in profiles[c.key].gpus})
    if machines:
        notes.append("Measured on: " + "; ".join(f"{cpu}, {t} thread{'s' if t != 1 else ''}" for cpu, t in machines)
                     + (f"; GPU: {', '.join(gpus)}" if gpus else "") + ".")
    missing = sorted({c.label for c in cells if not profiles[c.key].runs})
    if missing:
        notes.append(f"n/a: stored before runs recorded their size, speed and cost ({', '.join(missing)}).")
    return header, rows, notes


def _m(x: float | None) -> float | None:
    """Millions (parameters) or megabytes (bytes, 10^6)."""
    return None if x is None else x / 1e6


def _mean_dicts(dicts: list[dict]) -> dict:
    keys = sorted({k for d in dicts for k in d})
    return {k: _mean(d.get(k) for d in dicts) for k in keys}


def csv_values(p: CellProfile | None) -> list[str]:
    """The :data:`CSV_HEADER` columns of one cell (empty where not stored)."""
    p = p or CellProfile(0)
    out = [_int(p.params), _int(p.params_no_embeddings), _int(p.size_bytes)]
    for device in DEVICES:
        out += [_csv(p.latency.get((device, b))) for b in BATCHES]
        out += [_csv(p.throughput.get((device, b))) for b in BATCHES]
        out += [_csv(p.speedup.get((device, b))) for b in BATCHES]
    out += [_csv(p.size_ratio), _csv(p.retained), _csv(p.cost), _csv(p.own), _csv(p.shared),
            "" if p.complete is None else str(p.complete).lower(), str(p.runs), " ".join(map(str, p.threads)),
            "; ".join(p.cpus), "; ".join(p.gpus)]
    return out


# --------------------------------------------------------------------------- Pareto plots


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float  # the cell's mean score × 100 (a perplexity in its own units)
    front: bool = False
    teacher: bool = False


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[bool]:
    """Which points no other point dominates: another is dominated when a point is at least as good on both axes
    (x lower or equal; y higher or equal, lower for a lower-is-better score) and strictly better on one."""
    sign = 1 if higher_is_better else -1
    out = []
    for i, (x, y) in enumerate(points):
        out.append(not any(j != i and xo <= x and sign * yo >= sign * y and (xo < x or sign * yo > sign * y)
                           for j, (xo, yo) in enumerate(points)))
    return out


def pareto_points(cells, profiles: dict[tuple, CellProfile], axis: str, label_of: Callable) -> list[Point]:
    """One task's points: every cell with a value on ``axis`` (``latency``: CPU batch-1 ms; ``cost``: training
    seconds per run) at its mean score, and each teacher (its dev score; its latency, or its whole fine-tuning time),
    sorted by x, the Pareto front marked."""
    raw: list[tuple[str, float, float, bool]] = []
    teachers: dict[tuple, list] = {}
    for c in cells:
        p = profiles[c.key]
        x = p.latency.get(("cpu", "b1")) if axis == "latency" else p.cost
        if x is not None:
            raw.append((label_of(c), x, c.stats["mean"], False))
        if p.runs and not p.multi_teacher and len(c.teacher_scores) == 1:
            tx = p.teacher["latency"].get(("cpu", "b1")) if axis == "latency" else p.teacher.get("train_s")
            if tx is not None:
                teachers.setdefault((c.teacher, c.teacher_scores[0]), []).append(tx)
    names = {}
    for teacher, score in sorted(teachers):
        short = Path(teacher).name if "/" in teacher else teacher  # a local path: its folder's name
        names[(teacher, score)] = f"teacher {short}" + (f" ({score:.1f})" if sum(t == teacher for t, _ in teachers) > 1 else "")
    raw += [(names[k], _mean(v), k[1], True) for k, v in sorted(teachers.items())]
    hib = next((c.higher_is_better for c in cells), True)
    front = pareto_front([(x, y) for _, x, y, _ in raw], hib)
    points = [Point(label, x, y, f, t) for (label, x, y, t), f in zip(raw, front)]
    return sorted(points, key=lambda q: (q.x, -q.y if hib else q.y, q.label))


def plot_pareto(path: Path, title: str, points: Sequence[Point], xlabel: str, ylabel: str, higher_is_better: bool,
                plt, save: Callable) -> list[Point]:
    """Scatter of ``points`` with each labelled, the front joined by a step line; written by ``save(fig, path)``
    (the report's, which keeps PNGs free of dates). Returns the points as plotted."""
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    at: dict[tuple[float, float], list[str]] = {}  # cells with the same numbers share one point and one label
    for q in points:
        ax.scatter([q.x], [q.y], s=26 if q.front else 16, marker="*" if q.teacher else "o", zorder=3,
                   color="tab:red" if q.teacher else ("tab:blue" if q.front else "tab:gray"))
        at.setdefault((q.x, q.y), []).append(q.label)
    front = sorted({(q.x, q.y) for q in points if q.front})
    if len(front) > 1:  # the best score reachable at each cost: a staircase through the front
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="tab:blue", linewidth=1, alpha=0.7,
                label="Pareto front")
        ax.legend(loc="lower right" if higher_is_better else "upper right", fontsize=7, frameon=False)
    xs = [q.x for q in points]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log axis
    ax.margins(x=0.25, y=0.15)  # room for the labels right of the last point
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    texts = {k: ", ".join(v) for k, v in at.items()}
    for (x, y), (dx, dy, ha) in label_offsets(ax, texts).items():
        lead = {"arrowprops": {"arrowstyle": "-", "color": "tab:gray", "linewidth": 0.4}} if dy > LABEL_DY else {}
        ax.annotate(texts[(x, y)], (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va="bottom",
                    fontsize=LABEL_PT, **lead)  # a moved label keeps a thin line to its point
    save(fig, path)
    plt.close(fig)
    return list(points)


LABEL_PT = 6.5
LABEL_DY = 3.0  # points above its point where a label sits unless it has to move up
GAP = 4.0  # points kept between two labels side by side


def label_offsets(ax, labels: dict[tuple[float, float], str]) -> dict[tuple[float, float], tuple[float, float, str]]:
    """Where each point's label goes, in points from the point: right of it, or left of it in the right quarter of
    the axes (a label there would leave the figure); a label that would overlap one already placed (estimated boxes,
    bottom to top) moves up a line until it does not."""
    to_pt = 72.0 / ax.figure.dpi
    left, right = (ax.transAxes.transform((u, 0))[0] * to_pt for u in (0.0, 1.0))
    placed: list[tuple[float, float, float, float]] = []  # label boxes in points: x0, x1, y0, y1
    out = {}
    for (x, y), text in sorted(labels.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        px, py = (v * to_pt for v in ax.transData.transform((x, y)))
        width, height = 0.6 * LABEL_PT * len(text), LABEL_PT + 1.5
        ha = "right" if px > left + 0.75 * (right - left) else "left"

        def box(dy: float) -> tuple[float, tuple[float, float, float, float]]:
            dx = (-4.0 if ha == "right" else 4.0) * (4 if dy > LABEL_DY else 1)  # a moved label stands further out,
            x0 = px + dx - width if ha == "right" else px + dx               # so its line to the point shows
            return dx, (x0, x0 + width, py + dy, py + dy + height)

        dy = LABEL_DY
        dx, mine = box(dy)
        while any(mine[0] < b[1] + GAP and mine[1] + GAP > b[0] and mine[2] < b[3] and mine[3] > b[2] for b in placed):
            dy += height
            dx, mine = box(dy)
        placed.append(mine)
        out[(x, y)] = (dx, dy, ha)
    return out


__all__ = ["CellProfile", "cell_profiles", "size_speed_grid", "csv_values", "CSV_HEADER", "DEFINITIONS", "Point",
           "pareto_front", "pareto_points", "plot_pareto", "label_offsets"]

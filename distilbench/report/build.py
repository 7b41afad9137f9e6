"""`distilbench report`: tables, paired significance and plots from the results store, written to one folder.

``README.md`` (GitHub Markdown):

0. a header: the command that made the report, one ``Date:`` line, the results file with a fingerprint of the runs
   in it, the runs' git revisions and package versions, the packages that built the report;
1. objectives × tasks (paper 002 Table 1 style), one table per teacher/student/init: dev main score × 100,
   "mean ± std" over seeds, an Avg column (only for rows with every task), the best per column in bold, the teacher;
   beside each, the cells' size, speed, retained share and training cost per run (:mod:`distilbench.report.leaderboard`,
   from each row's stored ``extra.profile``; ``n/a`` for rows stored before it was recorded);
2. objective × init × task (paper 002 Table 3 style), for objectives run with more than one init;
3. pairwise significance matrices per task: Holm-corrected paired t-test p-values with the direction
   ("↑ 0.012": the row's mean is higher than the column's); with ``--per-example``, 3.3: per pair, the paired
   bootstrap over dev examples (Δ, CI, Holm p) and McNemar per seed (:mod:`distilbench.results.per_example`);
4. the plots, with per task the Pareto plots of score against latency and against training cost; 5. every cell
   with its seeds and config hash.

``cells.csv`` (one row per cell) and ``comparisons.csv`` (one row per compared pair) hold the same numbers unrounded
(4 decimals, p-values 6 significant digits; ``cells.csv`` ends with the size/speed/cost columns of
:data:`distilbench.report.leaderboard.CSV_HEADER`, empty where not stored); ``per_example.csv`` the per-example tests, with
``--per-example``.
``scores-<task>.png``: per-seed points, mean and 95% CI per objective; ``inits-<task>.png`` instead, where a task was
run from several student inits: per objective, the inits side by side; ``significance-<task>-<kind>.png``: heat maps
of the matrices; ``pareto-latency-<task>.png``, ``pareto-cost-<task>.png``: the Pareto plots.

Everything is sorted and formatted with fixed precision, and the PNGs carry no timestamps, so rebuilding from the
same results gives byte-identical files except the README's ``Date:`` line. ``report.json`` keeps what shaped the
report besides the rows (the command that first wrote it, its title, the suite's order of tasks, objectives and
inits, the per-example resamples, the results store and the folder as they were named): ``distilbench report DIR``
rebuilds the folder DIR from it exactly, wherever DIR now lies (another checkout, a copy), and that is the
``Rebuild:`` line printed in its header. A results store that lay inside the report folder (committed reports keep
theirs beside the README) is read from inside DIR; one outside it, by the path recorded. ``distilbench report
--results R --out DIR`` on a folder whose ``report.json`` names the same results file reuses them too.
Statistics: :mod:`distilbench.results.stats`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .plotting import pyplot as _plt, save as _save

ALPHA = 0.05
_GENERATED = ("README.md", "cells.csv", "comparisons.csv", "report.json")
_OPTIONAL = ("per_example.csv",)  # written only with --per-example; removed on a rebuild without it
_GENERATED_GLOBS = ("scores-*.png", "inits-*.png", "significance-*.png", "theta-*.png", "pareto-*.png")


# --------------------------------------------------------------------------- formatting


def fnum(x: float | None, digits: int) -> str:
    """Fixed-point text; '–' for a missing value; never '-0.0'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fcsv(x: float | None, digits: int = 4) -> str:
    return "" if x is None or math.isnan(x) else fnum(x, digits)


def fpcsv(p: float) -> str:
    return "" if math.isnan(p) else f"{p:.6g}"


def fp(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def arrow(diff: float) -> str:
    return "↑" if diff > 0 else "↓" if diff < 0 else "="


@dataclass
class Grid:
    """A table as text: the Markdown and the terminal render the same cells."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)
    align: str = "lr"  # first column(s) left, the rest right: the alignment of column i is align[min(i, len-1)]

    def markdown(self) -> str:
        def esc(text: str) -> str:
            return text.replace("|", "\\|")

        lines = ["| " + " | ".join(esc(h) for h in self.header) + " |",
                 "|" + "|".join(("---:" if self.align[min(i, len(self.align) - 1)] == "r" else "---")
                                for i in range(len(self.header))) + "|"]
        for r, row in enumerate(self.rows):
            cells = [f"**{esc(t)}**" if (r, c) in self.bold and t not in ("", "–") else esc(t) for c, t in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def rich(self):
        from rich.table import Table

        table = Table(title=self.title.replace("`", ""))
        for i, h in enumerate(self.header):
            table.add_column(h, justify="right" if self.align[min(i, len(self.align) - 1)] == "r" else "left")
        for r, row in enumerate(self.rows):
            table.add_row(*[f"[bold]{t}[/]" if (r, c) in self.bold else t for c, t in enumerate(row)])
        return table


# --------------------------------------------------------------------------- the model of a report


@dataclass
class Report:
    out: Path
    cells: list  # list[stats.Cell]
    comparisons: list  # list[stats.Comparison]
    tables: list[Grid]  # table 1 sections, then table 2
    files: list[Path]
    pareto: dict = field(default_factory=dict)  # Pareto plot file name -> the points it plots (leaderboard.Point)


def _task_order(tasks, preferred: Sequence[str]) -> list[str]:
    preferred = list(preferred)
    return sorted(set(tasks), key=lambda t: (preferred.index(t) if t in preferred else len(preferred), t))


def _cell_text(cell, modal_n: int) -> str:
    s = cell.stats
    text = fnum(s["mean"], 1) if s["n"] < 2 else f"{fnum(s['mean'], 1)} ± {fnum(s['std'], 2)}"
    text += f" (n={s['n']})" if s["n"] != modal_n else ""
    if cell.chance is not None and cell.chance.at_chance:
        text += " (at chance)"
    elif cell.unranked:
        text += " (unchecked)"
    return text


def _majority_row(cells, tasks: list[str], lead: list[str]) -> list[str] | None:
    """The majority-class score per task column (the floor every student must beat), or None when no task has one."""
    row = list(lead)
    for t in tasks:
        found = sorted({round(c.chance.majority, 6) for c in cells if c.task == t and c.chance is not None
                        and c.chance.applies and not math.isnan(c.chance.majority)})
        row.append(" / ".join(fnum(v, 1) for v in found) if found else "–")
    return row + ["–"] if any(v != "–" for v in row[len(lead):]) else None


def chance_notes(cells, orders: dict) -> list[str]:
    """Lines under a score table: what "at chance" means, and per task whether anything can be ranked."""
    from ..results.chance import ALPHA as CHANCE_ALPHA

    checked = [c for c in cells if c.chance is not None and c.chance.applies]
    if not checked:
        return []
    if not any(c.unranked for c in checked):
        return [f"Every student cell is significantly above the majority-class score (one-sided, α = {CHANCE_ALPHA}, "
                f"over seeds and over dev examples, `distilbench.chance`).", ""]
    lines = [f"*at chance*: not significantly above the majority-class score (one-sided, α = {CHANCE_ALPHA}, both over "
             f"seeds and over dev examples, `distilbench.chance`); such cells are never bold. *unchecked*: one seed and "
             f"no stored predictions."]
    for t in _task_order({c.task for c in checked}, orders.get("tasks", ())):
        task_cells = [c for c in checked if c.task == t]
        low = [c for c in task_cells if c.unranked]
        if len(low) == len(task_cells):
            lines.append(f"**{t}: every student cell is at chance: no objective can be ranked on this task at this size.**")
        elif low:
            lines.append(f"{t}: {len(low)} of {len(task_cells)} cells at chance (not ranked): "
                         + ", ".join(sorted({c.label for c in low})) + ".")
    return [line for x in lines for line in (x, "")]


def _best(values: dict[Any, float], higher: bool) -> set:
    """Keys of the best value; NaN (a cell that may not be ranked) never wins."""
    finite = {k: v for k, v in values.items() if not math.isnan(v)}
    if not finite:
        return set()
    target = max(finite.values()) if higher else min(finite.values())
    return {k for k, v in finite.items() if v == target}


def _modal_n(cells) -> int:
    counts: dict[int, int] = {}
    for c in cells:
        counts[len(c.scores)] = counts.get(len(c.scores), 0) + 1
    return max(sorted(counts), key=lambda n: counts[n]) if counts else 0


def _avg_higher(cells) -> bool:
    """Avg column: best is highest unless every task's score is lower-is-better."""
    return any(c.higher_is_better for c in cells) or not cells


def _sections(cells, orders) -> list[tuple[tuple[str, str, str, str, str], list]]:
    from ..results.stats import init_order

    groups: dict[tuple[str, str, str, str, str], list] = {}
    for c in cells:  # a cut dev set (--max-eval-examples), or another precision (bf16), is never ranked beside the
        # full fp32 one: its own table ("" for both: rows stored before precision was recorded are fp32)
        settings = dict(c.settings)
        groups.setdefault((c.teacher, c.init, c.student, settings.get("max_eval_examples", ""), settings.get("precision", "")),
                          []).append(c)
    ranked = init_order((k[1] for k in groups), orders.get("inits", ()))
    return sorted(groups.items(), key=lambda kv: (kv[0][0], ranked.index(kv[0][1]), kv[0][2], kv[0][3], kv[0][4]))


def settings_heading(cells) -> str:
    """The non-default settings of a table's cells: those every cell shares once, the others per task."""
    if not cells:
        return ""
    common = set(cells[0].settings)
    for c in cells[1:]:
        common &= set(c.settings)
    parts = [", ".join(f"{k}={v}" for k, v in sorted(common))] if common else []
    per_task: dict[str, set] = {}
    for c in cells:
        per_task.setdefault(c.task, set()).update(set(c.settings) - common)
    parts += [f"{t}: " + ", ".join(f"{k}={v}" for k, v in sorted(extra)) for t, extra in sorted(per_task.items()) if extra]
    return "; ".join(parts)


def objectives_table(title: str, cells, orders: dict, modal_n: int) -> Grid:
    """Paper 002 Table 1: objectives × tasks for one teacher/student/init."""
    from ..results.stats import objective_order

    tasks = _task_order((c.task for c in cells), orders.get("tasks", ()))
    labels = objective_order((c.label for c in cells), orders.get("objectives", ()))
    by = {(c.label, c.task): c for c in cells}
    main = {c.task: c.main_score for c in cells}
    grid = Grid(title, ["Objective", *[f"{t} ({main[t]})" for t in tasks], "Avg"])
    means: dict[tuple[int, int], float] = {}
    for r, label in enumerate(labels):
        row = [label]
        task_means = []
        for ci, t in enumerate(tasks, start=1):
            cell = by.get((label, t))
            row.append(_cell_text(cell, modal_n) if cell else "–")
            if cell:
                means[(r, ci)] = math.nan if cell.unranked else cell.stats["mean"]
                task_means.append(cell.stats["mean"])
        avg = sum(task_means) / len(task_means) if len(task_means) == len(tasks) else math.nan
        means[(r, len(tasks) + 1)] = avg if not any(math.isnan(means.get((r, ci), 0.0)) for ci in range(1, len(tasks) + 1)) else math.nan
        row.append(fnum(avg, 1))
        grid.rows.append(row)
    hib = {t: next(c.higher_is_better for c in cells if c.task == t) for t in tasks}
    for ci, t in enumerate([*tasks, None], start=1):
        column = {r: means[(r, ci)] for r in range(len(labels)) if (r, ci) in means}
        for r in _best(column, hib[t] if t else _avg_higher(cells)):
            grid.bold.add((r, ci))
    teacher = ["teacher"]
    values = []
    for t in tasks:
        scores = sorted({s for c in cells if c.task == t for s in c.teacher_scores})
        teacher.append(" / ".join(fnum(s, 1) for s in scores) if scores else "–")
        values.append(scores[0] if len(scores) == 1 else math.nan)
    teacher.append(fnum(sum(values) / len(values), 1) if values and not any(math.isnan(v) for v in values) else "–")
    if any(v != "–" for v in teacher[1:]):
        grid.rows.append(teacher)
    majority = _majority_row(cells, tasks, ["majority class"])
    if majority:
        grid.rows.append(majority)
    return grid


def inits_table(title: str, cells, orders: dict, modal_n: int) -> Grid | None:
    """Paper 002 Table 3: objective × init × task, for objectives run with two or more inits (one teacher)."""
    from ..results.stats import init_order, objective_order

    inits_of: dict[str, set[str]] = {}
    for c in cells:
        inits_of.setdefault(c.label, set()).add(c.init)
    labels = [lb for lb in objective_order(inits_of, orders.get("objectives", ())) if len(inits_of[lb]) > 1]
    if not labels:
        return None
    cells = [c for c in cells if c.label in labels]
    tasks = _task_order((c.task for c in cells), orders.get("tasks", ()))
    main = {c.task: c.main_score for c in cells}
    hib = {t: next(c.higher_is_better for c in cells if c.task == t) for t in tasks}
    by = {(c.label, c.init, c.task): c for c in cells}
    grid = Grid(title, ["Objective", "Init", *[f"{t} ({main[t]})" for t in tasks], "Avg"], align="llr")
    all_cells = cells
    for label in labels:
        inits = init_order(inits_of[label], orders.get("inits", ()))
        first = len(grid.rows)
        means: dict[tuple[int, int], float] = {}
        for k, init in enumerate(inits):
            r = first + k
            row = [label if k == 0 else "", init]
            task_means = []
            for ci, t in enumerate(tasks, start=2):
                cell = by.get((label, init, t))
                row.append(_cell_text(cell, modal_n) if cell else "–")
                if cell:
                    means[(r, ci)] = math.nan if cell.unranked else cell.stats["mean"]
                    task_means.append(cell.stats["mean"])
            avg = sum(task_means) / len(task_means) if len(task_means) == len(tasks) else math.nan
            ranked = not any(math.isnan(means.get((r, ci), 0.0)) for ci in range(2, len(tasks) + 2))
            means[(r, len(tasks) + 2)] = avg if ranked else math.nan
            row.append(fnum(avg, 1))
            grid.rows.append(row)
        for ci, t in enumerate([*tasks, None], start=2):
            column = {r: means[(r, ci)] for r in range(first, first + len(inits)) if (r, ci) in means}
            for r in _best(column, hib[t] if t else _avg_higher(cells)):
                grid.bold.add((r, ci))
    majority = _majority_row(all_cells, tasks, ["majority class", ""])
    if majority:
        grid.rows.append(majority)
    return grid


def significance_grid(title: str, comparisons, names: list[str]) -> Grid:
    """Square matrix: row r, column c = direction of r vs c and the Holm-corrected p; bold when < ALPHA."""
    index = {n: i for i, n in enumerate(names)}
    grid = Grid(title, ["", *names], [[n, *["—" if i == j else "" for j in range(len(names))]]
                                      for i, n in enumerate(names)], align="lc")
    for cmp in comparisons:
        r, c = index[cmp.a], index[cmp.b]
        res = cmp.result
        for (i, j), sign in (((r, c), 1), ((c, r), -1)):
            if res.mismatched_seeds:
                text = "seeds differ"
            elif math.isnan(cmp.holm_p):
                text = "n/a"
            else:
                text = f"{arrow(sign * res.mean_diff)} {fp(cmp.holm_p)}"
                if cmp.holm_p < ALPHA:
                    grid.bold.add((i, j + 1))
            grid.rows[i][j + 1] = text
    return grid


# --------------------------------------------------------------------------- plots


def _reference_lines(ax, cells) -> None:
    """The teacher's score (dashed red) and the dev set's majority class (dotted grey), when one value each; the legend
    goes outside the axes, right of the data."""
    teacher = sorted({t for c in cells for t in c.teacher_scores})
    if len(teacher) == 1:
        ax.axhline(teacher[0], color="tab:red", linestyle="--", linewidth=1, label="teacher")
    majority = sorted({round(c.chance.majority, 6) for c in cells
                       if c.chance is not None and c.chance.applies and not math.isnan(c.chance.majority)})
    if len(majority) == 1:
        ax.axhline(majority[0], color="tab:gray", linestyle=":", linewidth=1.2, label="majority class")


def _seed_points(ax, x: float, cell, color: str, spread: float = 0.08) -> None:
    """One cell at x: its per-seed points, the mean (black bar) and the 95% t CI as a whisker through the bar."""
    seeds = cell.seeds
    offsets = [(k - (len(seeds) - 1) / 2) * spread for k in range(len(seeds))]
    s = cell.stats
    if not math.isnan(s["ci_low"]):  # drawn on the bar itself, under the points
        ax.errorbar(x, s["mean"], yerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]], fmt="none",
                    ecolor="black", capsize=4, linewidth=1, zorder=2)
    ax.hlines(s["mean"], x - 0.22, x + 0.22, color="black", linewidth=2, zorder=4)
    ax.scatter([x + o for o in offsets], [cell.scores[sd] for sd in seeds], s=14, color=color, alpha=0.75, zorder=3)


def plot_scores(path: Path, title: str, cells, labels: list[str]) -> None:
    """Per-seed points, mean (black bar) and 95% t CI per objective, for one task and one teacher/init."""
    plt = _plt()
    by = {c.label: c for c in cells}
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.6))
    for x, label in enumerate(labels):
        _seed_points(ax, x, by[label], "tab:blue")
    _reference_lines(ax, cells)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)  # outside the data
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(f"{cells[0].main_score} × 100")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


INIT_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def plot_inits(path: Path, title: str, cells, labels: list[str], inits: list[str]) -> None:
    """Paper 002 Table 3's question in one figure: per objective (groups along x), the student inits side by side
    (one colour each), each with per-seed points, mean bar and 95% t CI; teacher and majority-class lines."""
    plt = _plt()
    by = {(c.label, c.init): c for c in cells}
    width = 0.8 / len(inits)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * len(labels) * len(inits) + 2.5), 3.8))
    for x, label in enumerate(labels):
        for k, init in enumerate(inits):
            cell = by.get((label, init))
            if cell is not None:
                _seed_points(ax, x + (k - (len(inits) - 1) / 2) * width, cell, INIT_COLOURS[k % len(INIT_COLOURS)],
                             spread=min(0.05, width / 6))
    for k, init in enumerate(inits):  # legend entries for the init colours
        ax.scatter([], [], s=14, color=INIT_COLOURS[k % len(INIT_COLOURS)], label=f"init {init}")
    _reference_lines(ax, cells)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)  # outside the data
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(f"{cells[0].main_score} × 100")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_significance(path: Path, title: str, comparisons, names: list[str]) -> None:
    """Heat map of signed -log10(Holm p): red = row higher than column, blue = lower; text = the corrected p."""
    import numpy as np

    plt = _plt()
    n = len(names)
    index = {name: i for i, name in enumerate(names)}
    values = np.full((n, n), np.nan)
    text = [["" for _ in range(n)] for _ in range(n)]
    for cmp in comparisons:
        r, c = index[cmp.a], index[cmp.b]
        for (i, j), sign in (((r, c), 1), ((c, r), -1)):
            if cmp.result.mismatched_seeds:
                text[i][j] = "≠ seeds"
            elif not math.isnan(cmp.holm_p):
                strength = -math.log10(max(cmp.holm_p, 1e-3))
                direction = np.sign(sign * cmp.result.mean_diff)
                values[i, j] = direction * strength
                text[i][j] = f"{arrow(sign * cmp.result.mean_diff)}{fp(cmp.holm_p)}"
    import textwrap

    shown = ["\n".join(textwrap.wrap(name, 18, break_long_words=False)) or name for name in names]  # long labels (`ted [beta=1.0]`) wrap
    size = max(3.5, 1.0 * n + 2.2)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", vmin=-3, vmax=3)
    for i in range(n):
        for j in range(n):
            if text[i][j]:  # dark cells get white text
                colour = "white" if not np.isnan(values[i, j]) and abs(values[i, j]) > 2 else "black"
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(n))
    ax.set_xticklabels(shown, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n))
    ax.set_yticklabels(shown, fontsize=8)
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("± -log10(Holm p); + = row higher")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------- writing


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def cells_csv_rows(cells, profiles: dict | None = None) -> list[list[str]]:
    from .leaderboard import csv_values

    out = []
    for c in cells:
        s = c.stats
        out.append([c.task, c.objective, c.label, c.init, c.teacher, c.student, c.config_hash, c.setting, c.main_score,
                    str(s["n"]), " ".join(str(x) for x in c.seeds), fcsv(s["mean"]), fcsv(s["std"]), fcsv(s["ci_low"]),
                    fcsv(s["ci_high"]), " ".join(fcsv(c.scores[x]) for x in c.seeds),
                    " ".join(fcsv(t) for t in c.teacher_scores), *_chance_csv(c),
                    *csv_values((profiles or {}).get(c.key))])  # size, speed, cost: appended, old columns keep their place
    return out


def _cells_header() -> list[str]:
    from .leaderboard import CSV_HEADER

    return CELLS_HEADER + CSV_HEADER


CELLS_HEADER = ["task", "objective", "label", "init", "teacher", "student", "config_hash", "setting", "main_score", "n",
                "seeds", "mean", "std", "ci_low", "ci_high", "scores", "teacher_score", "majority", "chance_seed_p",
                "chance_example_p", "at_chance"]


def _chance_csv(c) -> list[str]:
    ch = c.chance
    if ch is None or not ch.applies:
        return ["", "", "", "n/a"]
    return [fcsv(ch.majority), fpcsv(ch.seed_p), fpcsv(ch.example_p),
            "unchecked" if ch.at_chance is None else str(bool(ch.at_chance)).lower()]
COMPARISONS_HEADER = ["task", "a", "b", "n", "mean_diff", "ci_low", "ci_high", "t_p", "wilcoxon_p", "holm_p",
                      "mismatched", "kind", "family", "a_config_hash", "b_config_hash", "note"]


def comparisons_csv_rows(comparisons) -> list[list[str]]:
    out = []
    for cmp in comparisons:
        r = cmp.result
        out.append([cmp.task, cmp.a, cmp.b, str(r.n), fcsv(r.mean_diff), fcsv(r.ci_low), fcsv(r.ci_high), fpcsv(r.t_p),
                    fpcsv(r.wilcoxon_p), fpcsv(cmp.holm_p), "true" if r.mismatched_seeds else "false", cmp.kind,
                    cmp.family, cmp.a_cell.config_hash, cmp.b_cell.config_hash, r.reason])
    return out


PER_EXAMPLE_HEADER = ["task", "a", "b", "seeds", "n_examples", "diff", "boot_ci_low", "boot_ci_high", "boot_p",
                      "holm_p", "mcnemar", "family", "a_config_hash", "b_config_hash", "note"]


def per_example_csv_rows(example_comparisons) -> list[list[str]]:
    out = []
    for ex in example_comparisons:
        r = ex.result
        mcn = " ".join(f"{s}:{n01}/{n10}:{p:.6g}" for s, n01, n10, p in r.mcnemar)
        out.append([ex.task, ex.a, ex.b, " ".join(map(str, r.seeds)), str(r.n_examples) if r.n_examples else "",
                    fcsv(r.diff), fcsv(r.ci_low), fcsv(r.ci_high), fpcsv(r.bootstrap_p), fpcsv(ex.holm_p), mcn,
                    ex.family, ex.a_config_hash, ex.b_config_hash, r.reason])
    return out


def per_example_section(example_comparisons, samples: int, orders: dict) -> list[str]:
    """Section 3.3: per family, one row per pair: Δ on the dev set, its bootstrap CI and p (Holm), McNemar per seed."""
    md = ["### 3.3 Per-example tests on the dev predictions", "",
          f"Paired bootstrap over dev examples ({samples} resamples, the same indices for every seed of both sides; "
          f"Δ = mean over seeds of row − column, main score × 100): 95% percentile CI and two-sided p of the centred "
          f"test, Holm-corrected within the family, **bold** when below {ALPHA}. McNemar (classification only): "
          f"exact binomial p per seed on the examples exactly one side got right, `n01/n10` = only the first / only "
          f"the second right; uncorrected. Method: `distilbench/per_example.py`.", ""]
    from ..results.stats import by_family

    fams = by_family(example_comparisons)
    if not fams:
        return md + ["No pairs to compare.", ""]
    tasks = _task_order({fam[0].task for fam in fams.values()}, orders.get("tasks", ()))
    for family, fam in sorted(fams.items(), key=lambda kv: (tasks.index(kv[1][0].task), kv[0])):
        grid = Grid(family, ["A", "B", "Seeds", "Δ", "95% CI", "p", "Holm p", "McNemar per seed"], align="llr")
        for i, ex in enumerate(fam):
            r = ex.result
            if math.isnan(r.diff):
                grid.rows.append([ex.a, ex.b, " ".join(map(str, r.seeds)), "n/a", "", "", "", r.reason])
                continue
            mcn = "; ".join(f"{s}: {n01}/{n10} p={fp(p)}" for s, n01, n10, p in r.mcnemar) or "– (regression)"
            grid.rows.append([ex.a, ex.b, " ".join(map(str, r.seeds)), f"{arrow(r.diff)} {fnum(r.diff, 2)}",
                              f"{fnum(r.ci_low, 2)} – {fnum(r.ci_high, 2)}", fp(r.bootstrap_p), fp(ex.holm_p), mcn])
            if ex.holm_p < ALPHA:
                grid.bold.add((i, 6))
        md += [f"#### {family}", "", grid.markdown(), ""]
    return md


def _versions(rows: list[dict]) -> str:
    found: dict[str, set[str]] = {}
    for r in rows:
        for k, v in (r.get("versions") or {}).items():
            found.setdefault(str(k), set()).add(str(v))
    return "; ".join(f"{k} {' / '.join(sorted(v))}" for k, v in sorted(found.items())) or "not recorded"


def _builder_versions() -> str:
    import matplotlib
    import numpy
    import scipy

    from .. import __version__

    return f"distilbench {__version__}, matplotlib {matplotlib.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}"


def fingerprint(rows: list[dict]) -> str:
    lines = sorted(f"{r.get('run_key') or (r.get('config_hash'), r.get('seed'))}\t{float(r['score'])!r}" for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def build_report(rows: Any, out: str | Path, *, command: str, results: str | None = None,
                 orders: dict[str, Sequence[str]] | None = None, title: str | None = None,
                 console=None, date: datetime | None = None, per_example: int = 0, folder: str | None = None) -> Report:
    """Write the report of ``rows`` (``ResultsStore.rows()`` or ``.dataframe()``) into ``out``.

    ``command``: the exact command line to print in the header. ``orders``: preferred order of ``tasks``,
    ``objectives`` and ``inits`` (a suite's), else none, kd, then alphabetical. ``console``: a rich Console for the
    terminal tables (None: stdout; False: print nothing). ``per_example``: bootstrap resamples for the per-example
    tests of :mod:`distilbench.results.per_example` (section 3.3 and ``per_example.csv``); 0 leaves them out. ``folder``: the
    report folder as the ``Rebuild:`` line and ``report.json`` name it (default ``out``; a rebuild of a moved copy
    passes the name it was first written under, so that every file comes out the same).
    """
    from ..errors import UsageError
    from .leaderboard import cell_profiles
    from ..results.stats import _row_dicts, by_family, cells_from_rows, compare, init_order, is_result, objective_order

    orders = dict(orders or {})
    rows = [r for r in _row_dicts(rows) if is_result(r)]
    cells = cells_from_rows(rows)
    if not cells:
        raise UsageError(f"no finished student runs in {results or 'the given rows'}: nothing to report; "
                         "run `distilbench run` or `distilbench suite` first")
    cells = with_checks(cells, rows)
    profiles = cell_profiles(cells, rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in _GENERATED + _OPTIONAL:
        (out / name).unlink(missing_ok=True)
    for pattern in _GENERATED_GLOBS:
        for stale in sorted(out.glob(pattern)):
            stale.unlink()
    modal_n = _modal_n(cells)
    files: list[Path] = []

    # 1. objectives × tasks, one table per teacher/init/student
    sections = _sections(cells, orders)
    tables: list[Grid] = []
    md: list[str] = []
    date = date or datetime.now(timezone.utc)
    revs = sorted({str(r.get("git_rev")) for r in rows if r.get("git_rev")})
    md += [f"# {title or 'distilbench report'}", "",
           f"Command: `{command}`", ""]
    folder = str(out) if folder is None else folder
    if results:
        import shlex

        md += [f"Rebuild: `distilbench report {shlex.quote(folder)}`", ""]
    md += [f"Date: {date.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}", "",
           f"- **Results:** `{results or '(rows given directly)'}`: {len(rows)} runs in {len(cells)} cells, "
           f"fingerprint `{fingerprint(rows)}` (sha256 of the sorted run keys and scores)",
           f"- **Git revision(s) of the runs:** {', '.join(f'`{r}`' for r in revs) or 'not recorded'}",
           f"- **Package versions of the runs:** {_versions(rows)}",
           f"- **Report built with:** {_builder_versions()}",
           "- **Config hashes:** one per cell (the run identity without the seed), in [§5 Cells](#5-cells) and "
           "`cells.csv`",
           f"- **Settings that differ from the defaults:** {settings_heading(cells) or 'none'}",
           *[f"- **Task `{t}`:** {p}" for t, p in _provenance(cells)],
           "",
           f"Scores are the dev main score × 100 (mean ± std over seeds, std with ddof=1; n={modal_n} seeds unless "
           f"marked). A label like `kd [temperature=4.0]` names what tells two configurations of one objective apart.",
           "", "## 1. Objectives × tasks", ""]
    multi = len(sections) > 1
    defined = False  # the size/speed definitions are printed under the first such table
    for k, ((teacher, init, student, *_), members) in enumerate(sections, start=1):
        heading = f"Teacher `{teacher}`, init `{init}`" + (f", student `{student}`" if student != f"{teacher}[{init}]" else "")
        cut = settings_heading(members)
        grid = objectives_table(heading + (f" ({cut})" if cut else ""), members, orders, modal_n)
        tables.append(grid)
        md += [f"### 1.{k} {heading}" if multi else f"### {heading}", ""]
        md += [f"Settings that differ from the defaults: {cut}.", ""] if cut else []
        md += ["**Bold**: best in the column among cells above chance. Avg: mean over the tasks, only for rows with "
               "every task.", "", grid.markdown(), "", *chance_notes(members, orders)]
        md += size_speed_section(members, profiles, orders, defined)
        defined = defined or any(profiles[c.key].runs for c in members)

    # 2. inits
    md += ["## 2. Student initialisation", ""]
    init_tables = []
    for teacher in sorted({c.teacher for c in cells}):
        grid = inits_table(f"Teacher `{teacher}`: objective × init", [c for c in cells if c.teacher == teacher],
                           orders, modal_n)
        if grid is not None:
            init_tables.append(grid)
            md += [f"### {grid.title}", "", "**Bold**: the best init of the objective in the column.", "",
                   grid.markdown(), ""]
    tables += init_tables
    if not init_tables:
        md += ["No objective was run with more than one init.", ""]

    # 3. significance
    comparisons = (compare(cells, "objectives", orders.get("objectives", ()))
                   + compare(cells, "inits", orders.get("inits", ())))
    md += ["## 3. Significance", "",
           f"Paired over seeds (seed k of both sides shares data order, selection split and student init). Entry in "
           f"row r, column c: ↑ if r's mean is higher than c's, ↓ if lower, then the paired t-test p-value "
           f"Holm–Bonferroni-corrected within the matrix; **bold** when below {ALPHA}. `seeds differ`: the two cells "
           f"ran different seed sets and are not compared; `n/a`: fewer than 2 seeds. Uncorrected t-test and "
           f"Wilcoxon signed-rank p-values, the mean difference and its 95% CI are in `comparisons.csv`.", ""]
    plots: list[tuple[str, str]] = []
    for kind, heading in (("objectives", "3.1 Objectives"), ("inits", "3.2 Inits")):
        fams = by_family(comparisons, kind)
        md += [f"### {heading}", ""]
        if not fams:
            md += ["No pairs to compare.", ""]
            continue
        shared: dict[tuple, int] = {}
        for fam in fams.values():
            c = fam[0].a_cell
            slot = (c.task, c.teacher, c.init, c.student) if kind == "objectives" else (c.task, c.teacher, c.label)
            shared[slot] = shared.get(slot, 0) + 1
        tasks_seen = _task_order({fam[0].task for fam in fams.values()}, orders.get("tasks", ()))
        fam_list = sorted(fams.items(), key=lambda kv: (tasks_seen.index(kv[1][0].task), kv[0]))
        per_task = {t: sum(1 for _, fam in fam_list if fam[0].task == t) for t in tasks_seen}
        numbered: dict[str, int] = {}
        for _, fam in fam_list:
            c = fam[0].a_cell
            if kind == "objectives":
                names = objective_order({x.a for x in fam} | {x.b for x in fam}, orders.get("objectives", ()))
                what = f"{c.task}: teacher `{c.teacher}`, init `{c.init}`"
                slot = (c.task, c.teacher, c.init, c.student)
                extra = f", setting `{c.setting}`" if shared[slot] > 1 else ""
            else:
                names = init_order({x.a for x in fam} | {x.b for x in fam}, orders.get("inits", ()))
                what = f"{c.task}: {c.label}, teacher `{c.teacher}`"
                slot = (c.task, c.teacher, c.label)
                extra = f", setting `{c.init_setting}`" if shared[slot] > 1 else ""
            numbered[c.task] = numbered.get(c.task, 0) + 1
            suffix = f"-{numbered[c.task]}" if per_task[c.task] > 1 else ""
            name = f"significance-{_slug(c.task)}-{kind}{suffix}.png"
            grid = significance_grid(what + extra, fam, names)
            md += [f"#### {what}{extra}", "", grid.markdown(), "", detectable_line(fam), ""]
            plot_significance(out / name, (what + extra).replace("`", ""), fam, names)
            plots.append((name, what + extra))
            files.append(out / name)
    example_comparisons = []
    if per_example:
        from ..results.per_example import compare_examples

        example_comparisons = compare_examples(rows, comparisons, per_example)
        md += per_example_section(example_comparisons, per_example, orders)

    # 4. plots
    score_plots: list[tuple[str, str]] = []
    by_init, init_plots = _init_figures(out, sections, orders)  # one figure per task where the student init varies
    files += [out / name for name, _ in init_plots]
    for k, ((teacher, init, student, *_), members) in enumerate(sections, start=1):
        labels_all = objective_order((c.label for c in members), orders.get("objectives", ()))
        for task in _task_order((c.task for c in members), orders.get("tasks", ())):
            if (task, teacher) in by_init:
                continue
            task_cells = [c for c in members if c.task == task]
            labels = [lb for lb in labels_all if any(c.label == lb for c in task_cells)]
            name = f"scores-{_slug(task)}-{k}.png" if multi else f"scores-{_slug(task)}.png"
            caption = f"{task}: teacher {teacher}, init {init}"
            plot_scores(out / name, caption, task_cells, labels)
            files.append(out / name)
            score_plots.append((name, caption))
    md += ["## 4. Plots", "", "Per-seed scores (points), mean (bar) and 95% t confidence interval per objective; the "
           "dashed red line is the teacher, the dotted grey line the majority class.", ""]
    for name, caption in score_plots:
        md += [f"![{caption}]({name})", ""]
    if init_plots:
        md += ["Student initialisation (paper 002 Table 3): per objective, the inits side by side, each with its "
               "per-seed points, mean and 95% CI.", ""]
    for name, caption in init_plots:
        md += [f"![{caption}]({name})", ""]
    md += ["Significance heat maps (signed −log10 of the Holm-corrected p; red: the row is higher).", ""]
    for name, caption in plots:
        md += [f"![{caption.replace('`', '')}]({name})", ""]
    pareto_md, pareto = pareto_plots(out, cells, profiles, orders)
    md += pareto_md
    files += [out / name for name in pareto]

    # 5. cells
    md += ["## 5. Cells", "",
           "| Task | Objective | Init | Teacher | n | Seeds | Mean | 95% CI | Config hash |",
           "|---|---|---|---|---:|---|---:|---|---|"]
    for c in sorted(cells, key=lambda c: (_task_order([c.task], orders.get("tasks", ())), c.task, c.teacher,
                                          init_order([c.init], orders.get("inits", ())), c.label, c.config_hash)):
        s = c.stats
        md.append(f"| {c.task} | {c.label.replace('|', '/')} | {c.init} | {c.teacher} | {s['n']} | "
                  f"{' '.join(map(str, c.seeds))} | {fnum(s['mean'], 2)} | "
                  f"{fnum(s['ci_low'], 2)} – {fnum(s['ci_high'], 2)} | `{c.config_hash}` |")
    md.append("")

    # 6. AutoSKD's learned distributions (paper 003, Figure 2)
    theta_md, theta_files = theta_section(rows, out)
    md += theta_md
    files += theta_files

    (out / "README.md").write_text("\n".join(md), encoding="utf-8")
    inputs = {"command": command, "title": title, "results": results, "folder": folder,
              "orders": {k: list(v) for k, v in sorted(orders.items())}}
    if per_example:
        inputs["per_example"] = per_example
        _write_csv(out / "per_example.csv", PER_EXAMPLE_HEADER, per_example_csv_rows(example_comparisons))
    (out / "report.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    _write_csv(out / "cells.csv", _cells_header(), cells_csv_rows(cells, profiles))
    _write_csv(out / "comparisons.csv", COMPARISONS_HEADER, comparisons_csv_rows(comparisons))
    files = [out / n for n in _GENERATED] + ([out / "per_example.csv"] if per_example else []) + files

    if console is not False:
        from rich.console import Console

        console = console or Console()
        for grid in tables:
            console.print(grid.rich())
        for cmp_kind in ("objectives", "inits"):
            for family, fam in sorted(by_family(comparisons, cmp_kind).items()):
                significant = sum(1 for x in fam if not math.isnan(x.holm_p) and x.holm_p < ALPHA)
                mismatched = sum(1 for x in fam if x.result.mismatched_seeds)
                console.print(f"{cmp_kind} {family}: {significant} of {len(fam)} pairs significant "
                              f"(Holm p < {ALPHA})" + (f", {mismatched} with different seeds" if mismatched else ""))
        for family, fam in sorted(by_family(example_comparisons).items()):
            tested = [x for x in fam if not math.isnan(x.holm_p)]
            significant = sum(1 for x in tested if x.holm_p < ALPHA)
            console.print(f"per-example bootstrap {family}: {significant} of {len(fam)} pairs significant "
                          f"(Holm p < {ALPHA})" + (f", {len(fam) - len(tested)} n/a" if len(tested) < len(fam) else ""))
        console.print(f"report written to {out}/README.md")
    return Report(out, cells, comparisons, tables, files, pareto)


def _init_figures(out: Path, sections, orders: dict) -> tuple[set, list[tuple[str, str]]]:
    """Where one task was run from several student inits (same teacher and settings), one `inits-<task>.png`
    holding them all replaces the per-init score figures. Returns the (task, teacher) slots it covers and the
    (file, caption) pairs."""
    from ..results.stats import init_order, objective_order

    groups: dict[tuple, list] = {}
    for (teacher, init, student, *rest), members in sections:
        for c in members:
            groups.setdefault((c.task, teacher, *rest), []).append(c)  # the student's name includes its init
    covered, plots, numbered = set(), [], {}
    tasks = _task_order({key[0] for key in groups}, orders.get("tasks", ()))
    for key, cells in sorted(groups.items(), key=lambda kv: (tasks.index(kv[0][0]), kv[0])):
        inits = init_order({c.init for c in cells}, orders.get("inits", ()))
        if len(inits) < 2:
            continue
        task, teacher = key[:2]
        covered.add((task, teacher))
        numbered[task] = numbered.get(task, 0) + 1
        name = f"inits-{_slug(task)}" + (f"-{numbered[task]}" if numbered[task] > 1 else "") + ".png"
        labels = objective_order({c.label for c in cells}, orders.get("objectives", ()))
        caption = f"{task}: teacher {teacher}, by student init"
        plot_inits(out / name, caption, cells, labels, inits)
        plots.append((name, caption))
    return covered, plots


def size_speed_section(members, profiles: dict, orders: dict, defined: bool) -> list[str]:
    """Beside a score table: its cells' size, speed, retained share and training cost (:mod:`distilbench.report.leaderboard`)."""
    from .leaderboard import DEFINITIONS, size_speed_grid
    from ..results.stats import objective_order

    tasks = _task_order((c.task for c in members), orders.get("tasks", ()))
    labels = objective_order((c.label for c in members), orders.get("objectives", ()))
    found = size_speed_grid(members, profiles, tasks, labels)
    if found is None:
        return ["Size, speed and training cost: n/a (these runs were stored before runs recorded them).", ""]
    header, rows, notes = found
    grid = Grid("Size, speed and cost", header, rows, align="llr")
    return (["**Size, speed and cost.**" + ("" if defined else f" {DEFINITIONS}"), "", grid.markdown(), ""]
            + [line for note in notes for line in (note, "")])


def pareto_plots(out: Path, cells, profiles: dict, orders: dict) -> tuple[list[str], dict]:
    """Per task (and cut dev set), score against CPU batch-1 latency and against training cost per run, with the
    Pareto front: the Markdown, and {file name: the points plotted}."""
    from .leaderboard import pareto_points, plot_pareto

    groups: dict[tuple[str, str], list] = {}
    for c in cells:
        groups.setdefault((c.task, dict(c.settings).get("max_eval_examples", "")), []).append(c)
    md, plotted = [], {}
    tasks = _task_order({t for t, _ in groups}, orders.get("tasks", ()))
    for task, cut in sorted(groups, key=lambda k: (tasks.index(k[0]), k[1])):
        members = groups[(task, cut)]
        teachers, inits = {c.teacher for c in members}, {(c.init, c.student) for c in members}

        def label_of(c) -> str:
            return c.label + (f" · {c.init}" if len(inits) > 1 else "") + (f" · {c.teacher}" if len(teachers) > 1 else "")

        cuts = sorted(k for t, k in groups if t == task)
        suffix = f"-{cuts.index(cut) + 1}" if len(cuts) > 1 else ""
        what = task + (f" (max_eval_examples={cut})" if cut else "")
        ylabel = f"{members[0].main_score} × 100"
        for axis, xlabel, title in (("latency", "latency, batch 1, CPU (ms)", "latency"),
                                    ("cost", "training cost per run (s)", "training cost")):
            points = pareto_points(members, profiles, axis, label_of)
            if not points:
                continue
            name = f"pareto-{axis}-{_slug(task)}{suffix}.png"
            plotted[name] = plot_pareto(out / name, f"{what}: score against {title}", points, xlabel, ylabel,
                                        members[0].higher_is_better, _plt(), _save)
            md += [f"![{what}: score against {title}]({name})", ""]
    if md:
        md = ["Score (cell mean) against latency and against training cost per run (defined under the first size "
              "table), the teacher as a star; the line joins the Pareto front: the points no other point beats on "
              "both axes.", ""] + md
    return md, plotted


def with_checks(cells, rows) -> list:
    """The cells with their signal check (:mod:`distilbench.results.chance`) and non-default settings, from their rows."""
    import dataclasses

    from ..results.chance import check_rows
    from ..results.stats import CELL_KEYS

    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault(tuple(str(r.get(k)) for k in CELL_KEYS), []).append(r)
    return [dataclasses.replace(c, chance=check_rows(by[c.key]), settings=_settings_of(by[c.key])) for c in cells]


def _settings_of(rows: list[dict]) -> tuple[tuple[str, str], ...]:
    """Non-default settings shared by a cell's rows: stored ones (``extra.settings``), else those of the identity's
    hyper-parameters (rows written before settings were stored)."""
    import dataclasses

    from ..config import RunConfig

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    found = None
    for r in rows:
        stored = _extra(r).get("settings")
        if stored is None:
            hp = (r.get("params") or {}).get("hparams") or {}
            stored = {k: v for k, v in hp.items() if k in defaults and v != defaults[k]}
        items = {(str(k), str(v)) for k, v in stored.items()}
        found = items if found is None else found & items
    return tuple(sorted(found or ()))


def _provenance(cells) -> list[tuple[str, str]]:
    from ..errors import UsageError
    from ..data.tasks import get_task

    out = []
    for t in sorted({c.task for c in cells}):
        try:
            note = get_task(t).provenance
        except UsageError:
            note = None
        if note:
            out.append((t, note))
    return out


def detectable_line(fam) -> str:
    """The smallest paired difference the family's design could detect (α = 0.05, power 0.8, paired t over seeds)."""
    from ..results.chance import ALPHA as A, POWER, detectable_difference, pooled_sd

    diffs = []
    for cmp in fam:
        if cmp.result.mismatched_seeds or cmp.result.n < 2:
            continue
        a, b = cmp.a_cell.scores, cmp.b_cell.scores
        diffs.append([a[s] - b[s] for s in sorted(a)])
    if not diffs:
        return "Smallest detectable paired difference: n/a (fewer than 2 shared seeds)."
    n = min(len(d) for d in diffs)
    sd = pooled_sd(diffs)
    mde = detectable_difference(sd, n)
    return (f"Smallest detectable paired difference: **{fnum(mde, 2)} points** (two-sided α = {A}, power {POWER}, "
            f"n = {n} seeds, pooled sd of the paired differences {fnum(sd, 2)} over {len(diffs)} pair{'s' if len(diffs) > 1 else ''}; before Holm, "
            f"which needs more). A difference below it that is not significant is inconclusive, not absent.")


def _extra(row: dict) -> dict:
    extra = row.get("extra") or {}
    return json.loads(extra) if isinstance(extra, str) else extra


def theta_section(rows: list[dict], out: Path) -> tuple[list[str], list[Path]]:
    """AutoSKD runs: θ after phase 1, after phase 2 and the chosen candidate per teacher, mean ± std over seeds, as a
    table and a bar chart per task and configuration (paper 003, Figure 2)."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        rep = _extra(r).get("objective_report") or {}
        if r.get("objective") == "autoskd" and rep.get("theta_phase1"):
            groups.setdefault((r["task"], r["config_hash"]), []).append(rep)
    if not groups:
        return [], []
    md = ["## 6. AutoSKD: learned categorical distributions", "",
          "θ per teacher after phase 1, after phase 2 (Eq. 8 selection in between) and the chosen candidate "
          "(best on the selection split), mean ± std over seeds.", ""]
    files = []
    per_task: dict[str, int] = {}
    for (task, config_hash), reps in sorted(groups.items()):
        team = reps[0]["team"]
        series = {"phase 1": [r["theta_phase1"] for r in reps], "phase 2": [r["theta_phase2"] for r in reps],
                  "chosen": [r["theta"] for r in reps if r.get("theta")]}
        stats = {k: (np.mean(v, axis=0), np.std(v, axis=0, ddof=1) if len(v) > 1 else np.zeros(len(team)))
                 for k, v in series.items() if v}
        md += [f"### {task}, config `{config_hash}` ({len(reps)} seeds, m = {reps[0].get('m')})", "",
               "| Teacher | " + " | ".join(stats) + " |", "|---|" + "---:|" * len(stats)]
        for j, name in enumerate(team):
            md.append(f"| `{name}` | " + " | ".join(f"{m[j]:.3f} ± {sd[j]:.3f}" for m, sd in stats.values()) + " |")
        per_task[task] = per_task.get(task, 0) + 1
        name = f"theta-{_slug(task)}" + (f"-{per_task[task]}" if per_task[task] > 1 else "") + ".png"
        plt = _plt()
        fig, ax = plt.subplots(figsize=(2.8 + 1.3 * len(team), 3.2))
        width = 0.8 / len(stats)
        x = np.arange(len(team))
        for k, (label, (m, sd)) in enumerate(stats.items()):
            ax.bar(x + (k - (len(stats) - 1) / 2) * width, m, width, yerr=sd, capsize=3, label=label)
        ax.set_xticks(x, [Path(t).name if "/" in t else t for t in team], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("θ")
        ax.set_ylim(0, 1)
        ax.set_title(f"AutoSKD θ on {task}: bar = mean, whisker = ± 1 std over {len(reps)} seeds", fontsize=9)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)  # outside the bars
        fig.tight_layout()
        _save(fig, out / name)
        plt.close(fig)
        files.append(out / name)
        md += ["", f"![AutoSKD theta on {task}]({name})", ""]
    return md, files


__all__ = ["build_report", "Report", "Grid"]

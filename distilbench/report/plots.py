"""The report's figures: per-seed scores per objective, the inits side by side, significance heat maps, and per task
the Pareto plots of score against latency and training cost. Every PNG is written by :func:`~.plotting.save`, without
timestamps, so that a rebuild is byte-identical."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from ..results.stats import init_order, objective_order
from .format import arrow, better_by, fp, score_axis, slug, task_order
from .leaderboard import pareto_points, plot_pareto
from .plotting import pyplot as _plt
from .plotting import save as _save


def _reference_lines(ax, cells) -> None:
    """The teacher's score (dashed red) and the floor (dotted grey): the dev set's majority class, or extractive QA's
    question-blind floor, labelled by what it is; each when it is one value. The legend goes outside the axes, right
    of the data."""
    teacher = sorted({t for c in cells for t in c.teacher_scores})
    if len(teacher) == 1:
        ax.axhline(teacher[0], color="tab:red", linestyle="--", linewidth=1, label="teacher")
    floors = sorted({(round(c.chance.majority, 6), c.chance.floor) for c in cells
                     if c.chance is not None and c.chance.applies and not math.isnan(c.chance.majority)})
    if len(floors) == 1:
        ax.axhline(floors[0][0], color="tab:gray", linestyle=":", linewidth=1.2, label=floors[0][1])


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
    _finish_score_plot(plt, fig, ax, path, title, cells, labels)


def _finish_score_plot(plt, fig, ax, path: Path, title: str, cells, labels: list[str]) -> None:
    """Objective labels along x, the score's name, the title, a light grid; saved and closed."""
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(score_axis(cells[0]))
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
    _finish_score_plot(plt, fig, ax, path, title, cells, labels)


def plot_significance(path: Path, title: str, comparisons, names: list[str]) -> None:
    """Heat map of signed -log10(Holm p): red = row better than column (higher; lower for a perplexity), blue = worse;
    text = the corrected p."""
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
                better = better_by(sign * cmp.result.mean_diff, cmp.a_cell.higher_is_better)
                values[i, j] = np.sign(better) * strength
                text[i][j] = f"{arrow(better)}{fp(cmp.holm_p)}"

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
    bar.set_label("± -log10(Holm p); + = row better")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def init_figures(out: Path, sections, orders: dict) -> tuple[set, list[tuple[str, str]]]:
    """Where one task was run from several student inits (same teacher and settings), one `inits-<task>.png`
    holding them all replaces the per-init score figures. Returns the (task, teacher) slots it covers and the
    (file, caption) pairs."""
    groups: dict[tuple, list] = {}
    for (teacher, init, student, *rest), members in sections:
        for c in members:
            groups.setdefault((c.task, teacher, *rest), []).append(c)  # the student's name includes its init
    covered, plots, numbered = set(), [], {}
    tasks = task_order({key[0] for key in groups}, orders.get("tasks", ()))
    for key, cells in sorted(groups.items(), key=lambda kv: (tasks.index(kv[0][0]), kv[0])):
        inits = init_order({c.init for c in cells}, orders.get("inits", ()))
        if len(inits) < 2:
            continue
        task, teacher = key[:2]
        covered.add((task, teacher))
        numbered[task] = numbered.get(task, 0) + 1
        name = f"inits-{slug(task)}" + (f"-{numbered[task]}" if numbered[task] > 1 else "") + ".png"
        labels = objective_order({c.label for c in cells}, orders.get("objectives", ()))
        caption = f"{task}: teacher {teacher}, by student init"
        plot_inits(out / name, caption, cells, labels, inits)
        plots.append((name, caption))
    return covered, plots


def pareto_plots(out: Path, cells, profiles: dict, orders: dict) -> tuple[list[str], dict]:
    """Per task (and cut dev set), score against CPU batch-1 latency and against training cost per run, with the
    Pareto front: the Markdown, and {file name: the points plotted}."""
    groups: dict[tuple[str, str], list] = {}
    for c in cells:
        groups.setdefault((c.task, dict(c.settings).get("max_eval_examples", "")), []).append(c)
    md, plotted = [], {}
    tasks = task_order({t for t, _ in groups}, orders.get("tasks", ()))
    for task, cut in sorted(groups, key=lambda k: (tasks.index(k[0]), k[1])):
        members = groups[(task, cut)]
        teachers, inits = {c.teacher for c in members}, {(c.init, c.student) for c in members}

        def label_of(c) -> str:
            return c.label + (f" · {c.init}" if len(inits) > 1 else "") + (f" · {c.teacher}" if len(teachers) > 1 else "")

        cuts = sorted(k for t, k in groups if t == task)
        suffix = f"-{cuts.index(cut) + 1}" if len(cuts) > 1 else ""
        what = task + (f" (max_eval_examples={cut})" if cut else "")
        ylabel = score_axis(members[0])
        for axis, xlabel, title in (("latency", "latency, batch 1, CPU (ms)", "latency"),
                                    ("cost", "training cost per run (s)", "training cost")):
            points = pareto_points(members, profiles, axis, label_of)
            if not points:
                continue
            name = f"pareto-{axis}-{slug(task)}{suffix}.png"
            plotted[name] = plot_pareto(out / name, f"{what}: score against {title}", points, xlabel, ylabel,
                                        members[0].higher_is_better, _plt(), _save)
            md += [f"![{what}: score against {title}]({name})", ""]
    if md:
        md = ["Score (cell mean) against latency and against training cost per run (defined under the first size "
              "table), the teacher as a star; the line joins the Pareto front: the points no other point beats on "
              "both axes.", ""] + md
    return md, plotted

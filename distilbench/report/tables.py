"""The report's tables as :class:`~distilbench.report.format.Grid`: objectives × tasks (paper 002 Table 1), objective ×
init × task (Table 3), the significance matrices, the per-example tests, and the notes under them (at chance, the
smallest detectable difference, the settings that differ from the defaults, size, speed and cost)."""
from __future__ import annotations

import math
from typing import Any

from ..results.chance import ALPHA as A
from ..results.chance import ALPHA as CHANCE_ALPHA
from ..results.chance import POWER, detectable_difference, pooled_sd
from ..results.stats import by_family, init_order, objective_order
from .format import ALPHA, Grid, arrow, fnum, fp, task_order
from .leaderboard import DEFINITIONS, size_speed_grid


def _cell_text(cell, modal_n: int) -> str:
    s = cell.stats
    text = fnum(s["mean"], 1) if s["n"] < 2 else f"{fnum(s['mean'], 1)} ± {fnum(s['std'], 2)}"
    text += f" (n={s['n']})" if s["n"] != modal_n else ""
    if cell.chance is not None and cell.chance.at_chance:
        text += " (at chance)" if cell.higher_is_better else " (not below none)"  # an LM: checked against none
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


def _floor_label(cells) -> str:
    """The floor row's name: the majority class, or extractive QA's question-blind floor (distilbench.results.chance)."""
    qa = any(c.chance.floor != "majority class" for c in cells if c.chance is not None)
    classes = any(c.chance.floor == "majority class" for c in cells if c.chance is not None and c.chance.applies)
    return "majority class / QA floor" if qa and classes else "question-blind floor" if qa else "majority class"


def chance_notes(cells, orders: dict) -> list[str]:
    """Lines under a score table: what "at chance" means, and per task whether anything can be ranked."""
    checked = [c for c in cells if c.chance is not None and c.chance.applies]
    if not checked:
        return []
    floor = "majority-class score"
    if any(getattr(c.chance, "floor", "majority class") != "majority class" for c in checked):
        floor += " (extractive QA: the question-blind floor, the better of the empty answer and the first sentence)"
    if not any(c.unranked for c in checked):
        return [f"Every student cell is significantly above the {floor} (one-sided, α = {CHANCE_ALPHA}, "
                f"over seeds and over dev examples, `distilbench.results.chance`).", ""]
    lines = [f"*at chance*: not significantly above the {floor} (one-sided, α = {CHANCE_ALPHA}, both over "
             f"seeds and over dev examples, `distilbench.results.chance`); such cells are never bold. *unchecked*: one "
             f"seed and no stored predictions."]
    if any(not c.higher_is_better for c in checked):  # causal LM: no majority class; the floor is the none student
        lines.append(f"*not below none* (lower-is-better tasks: perplexity): not significantly below the `none` student "
                     f"of the same seeds (one-sided, α = {CHANCE_ALPHA}, over seeds and over evaluation windows, "
                     "`distilbench.results.lm_signal`); such cells are never bold; `none` is the baseline, not checked.")
    for t in task_order({c.task for c in checked}, orders.get("tasks", ())):
        task_cells = [c for c in checked if c.task == t]
        low = [c for c in task_cells if c.unranked]
        what = "at chance" if task_cells[0].higher_is_better else "not below none"
        if len(low) == len(task_cells):
            lines.append(f"**{t}: every student cell is {what}: no objective can be ranked on this task at this size.**")
        elif low:
            lines.append(f"{t}: {len(low)} of {len(task_cells)} cells {what} (not ranked): "
                         + ", ".join(sorted({c.label for c in low})) + ".")
    return [line for x in lines for line in (x, "")]


def pooling_notes(cells) -> list[str]:
    """Lines under a score table naming the cells that cannot test a claim about their objective because they read
    the first token of a mean-pooled model (:mod:`distilbench.results.pooling`)."""
    flagged = sorted({c.label for c in cells if c.pooling_caveat})
    if not flagged:
        return []
    why = next(c.pooling_caveat for c in cells if c.pooling_caveat)
    return [f"**First-token heads:** {', '.join(f'`{x}`' for x in flagged)}: {why}; see docs/pooling.md.", ""]


def _best(values: dict[Any, float], higher: bool) -> set:
    """Keys of the best value; NaN (a cell that may not be ranked) never wins."""
    finite = {k: v for k, v in values.items() if not math.isnan(v)}
    if not finite:
        return set()
    target = max(finite.values()) if higher else min(finite.values())
    return {k for k, v in finite.items() if v == target}


def modal_n_of(cells) -> int:
    counts: dict[int, int] = {}
    for c in cells:
        counts[len(c.scores)] = counts.get(len(c.scores), 0) + 1
    return max(sorted(counts), key=lambda n: counts[n]) if counts else 0


def _avg_higher(cells) -> bool:
    """Avg column: best is highest unless every task's score is lower-is-better."""
    return any(c.higher_is_better for c in cells) or not cells


def score_sections(cells, orders) -> list[tuple[tuple[str, str, str, str, str], list]]:
    groups: dict[tuple[str, str, str, str, str], list] = {}
    for c in cells:  # a cut dev set (--max-eval-examples), or another precision (bf16), is never ranked beside the
        # full fp32 one: its own table ("" for both: rows stored before precision was recorded are fp32)
        settings = dict(c.settings)
        groups.setdefault((c.teacher, c.init, c.student, settings.get("max_eval_examples", ""), settings.get("precision", "")),
                          []).append(c)
    ranked = init_order((k[1] for k in groups), orders.get("inits", ()))
    return sorted(groups.items(), key=lambda kv: (kv[0][0], ranked.index(kv[0][1]), kv[0][2], kv[0][3], kv[0][4]))


def settings_heading(cells) -> str:
    """The non-default settings of a table's cells: those every cell shares once, then those every cell of a task
    shares per task, then a cell's own (``ted: beta=10.0``) unless its label already names them."""
    if not cells:
        return ""
    common = set.intersection(*(set(c.settings) for c in cells))
    parts = [_joined(common)] if common else []
    own: dict[str, set] = {}
    for t in sorted({c.task for c in cells}):
        members = [c for c in cells if c.task == t]
        shared = set.intersection(*(set(c.settings) for c in members)) - common
        parts += [f"{t}: {_joined(shared)}"] if shared else []
        for c in members:
            rest = {kv for kv in set(c.settings) - common - shared if f"{kv[0]}={kv[1]}" not in c.label}
            if rest:
                own.setdefault(c.label + (f" ({t})" if len(members) < len(cells) else ""), set()).update(rest)
    by_settings: dict[str, list[str]] = {}  # cells with the same own settings are named together
    for label, rest in sorted(own.items()):
        by_settings.setdefault(_joined(rest), []).append(label)
    parts += [f"{', '.join(labels)}: {joined}" for joined, labels in by_settings.items()]
    return "; ".join(parts)


def _joined(settings) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings))


def objectives_table(title: str, cells, orders: dict, modal_n: int) -> Grid:
    """Paper 002 Table 1: objectives × tasks for one teacher/student/init."""
    tasks = task_order((c.task for c in cells), orders.get("tasks", ()))
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
    majority = _majority_row(cells, tasks, [_floor_label(cells)])
    if majority:
        grid.rows.append(majority)
    return grid


def inits_table(title: str, cells, orders: dict, modal_n: int) -> Grid | None:
    """Paper 002 Table 3: objective × init × task, for objectives run with two or more inits (one teacher)."""
    inits_of: dict[str, set[str]] = {}
    for c in cells:
        inits_of.setdefault(c.label, set()).add(c.init)
    labels = [lb for lb in objective_order(inits_of, orders.get("objectives", ())) if len(inits_of[lb]) > 1]
    if not labels:
        return None
    cells = [c for c in cells if c.label in labels]
    tasks = task_order((c.task for c in cells), orders.get("tasks", ()))
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
    majority = _majority_row(all_cells, tasks, [_floor_label(all_cells), ""])
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
                text = f"{arrow(sign * res.mean_diff, cmp.a_cell.higher_is_better)} {fp(cmp.holm_p)}"
                if cmp.holm_p < ALPHA:
                    grid.bold.add((i, j + 1))
            grid.rows[i][j + 1] = text
    return grid


def size_speed_section(members, profiles: dict, orders: dict, defined: bool) -> list[str]:
    """Beside a score table: its cells' size, speed, retained share and training cost (:mod:`distilbench.report.leaderboard`)."""
    tasks = task_order((c.task for c in members), orders.get("tasks", ()))
    labels = objective_order((c.label for c in members), orders.get("objectives", ()))
    found = size_speed_grid(members, profiles, tasks, labels)
    if found is None:
        return ["Size, speed and training cost: n/a (these runs were stored before runs recorded them).", ""]
    header, rows, notes = found
    grid = Grid("Size, speed and cost", header, rows, align="llr")
    return (["**Size, speed and cost.**" + ("" if defined else f" {DEFINITIONS}"), "", grid.markdown(), ""]
            + [line for note in notes for line in (note, "")])


def detectable_line(fam) -> str:
    """The smallest paired difference the family's design could detect (α = 0.05, power 0.8, paired t over seeds)."""
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
    units = "points" if fam[0].a_cell.higher_is_better else "perplexity"  # an LM's differences keep their units
    return (f"Smallest detectable paired difference: **{fnum(mde, 2)} {units}** (two-sided α = {A}, power {POWER}, "
            f"n = {n} seeds, pooled sd of the paired differences {fnum(sd, 2)} over {len(diffs)} pair{'s' if len(diffs) > 1 else ''}; before Holm, "
            f"which needs more). A difference below it that is not significant is inconclusive, not absent.")


def per_example_section(example_comparisons, samples: int, orders: dict) -> list[str]:
    """Section 3.3: per family, one row per pair: Δ on the dev set, its bootstrap CI and p (Holm), McNemar per seed.
    A perplexity pair (lower is better) keeps its Δ in perplexity units over windows; each pair says what it measures."""
    units = ("main score × 100; perplexity in its own units, over windows of the test text"
             if any(ex.measure == "perplexity" for ex in example_comparisons) else "main score × 100")
    md = ["### 3.3 Per-example tests on the dev predictions", "",
          f"Paired bootstrap over dev examples ({samples} resamples, the same indices for every seed of both sides; "
          f"Δ = mean over seeds of row − column, {units}; ↑ when the row is the better side): 95% percentile CI and two-sided p of the centred "
          f"test, Holm-corrected within the family, **bold** when below {ALPHA}. McNemar (classification only): "
          f"exact binomial p per seed on the examples exactly one side got right, `n01/n10` = only the first / only "
          f"the second right; uncorrected. Method: `distilbench/results/per_example.py`.", ""]

    fams = by_family(example_comparisons)
    if not fams:
        return md + ["No pairs to compare.", ""]
    tasks = task_order({fam[0].task for fam in fams.values()}, orders.get("tasks", ()))
    # per task, in compare_examples' order: build_report gives the objective families (by name), then the init ones
    for family, fam in sorted(fams.items(), key=lambda kv: tasks.index(kv[1][0].task)):
        grid = Grid(family, ["A", "B", "Seeds", "Δ", "95% CI", "p", "Holm p", "McNemar per seed"], align="llr")
        for i, ex in enumerate(fam):
            r = ex.result
            if math.isnan(r.diff):
                grid.rows.append([ex.a, ex.b, " ".join(map(str, r.seeds)), "n/a", "", "", "", r.reason])
                continue
            mcn = "; ".join(f"{s}: {n01}/{n10} p={fp(p)}" for s, n01, n10, p in r.mcnemar) or f"– ({ex.measure})"
            grid.rows.append([ex.a, ex.b, " ".join(map(str, r.seeds)), f"{arrow(r.diff, ex.higher_is_better)} {fnum(r.diff, 2)}",
                              f"{fnum(r.ci_low, 2)} – {fnum(r.ci_high, 2)}", fp(r.bootstrap_p), fp(ex.holm_p), mcn])
            if ex.holm_p < ALPHA:
                grid.bold.add((i, 6))
        md += [f"#### {family}", "", grid.markdown(), ""]
    return md

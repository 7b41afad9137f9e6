"""The numbered sections of a report's README, each a function returning its Markdown lines (and the tables it shows,
or the files it drew): 1. objectives × tasks, 2. student initialisation, 3. significance, 4. plots, 5. cells. The
header and section 6 (AutoSKD's θ, :mod:`.theta`) are written by :mod:`.build`, which calls these in order."""
from __future__ import annotations

from pathlib import Path

from ..results.stats import by_family, init_order, objective_order
from .format import ALPHA, Grid, fnum, slug, task_order
from .plots import init_figures, pareto_plots, plot_scores, plot_significance
from .tables import (
    chance_notes,
    detectable_line,
    inits_table,
    objectives_table,
    pooling_notes,
    settings_heading,
    significance_grid,
    size_speed_section,
)

Figures = list[tuple[str, str]]  # (file name, caption) per figure


def objectives_section(sections, profiles: dict, orders: dict, modal_n: int) -> tuple[list[str], list[Grid]]:
    """Section 1: one objectives × tasks table per teacher/init/student (and settings), each with its size, speed and
    cost beside it."""
    md, tables = ["## 1. Objectives × tasks", ""], []
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
               "every task.", "", grid.markdown(), "", *chance_notes(members, orders), *pooling_notes(members)]
        md += size_speed_section(members, profiles, orders, defined)
        defined = defined or any(profiles[c.key].runs for c in members)
    return md, tables


def inits_section(cells, orders: dict, modal_n: int) -> tuple[list[str], list[Grid]]:
    """Section 2: per teacher, objective × init × task for the objectives run with more than one init."""
    md, tables = ["## 2. Student initialisation", ""], []
    for teacher in sorted({c.teacher for c in cells}):
        grid = inits_table(f"Teacher `{teacher}`: objective × init", [c for c in cells if c.teacher == teacher],
                           orders, modal_n)
        if grid is not None:
            tables.append(grid)
            md += [f"### {grid.title}", "", "**Bold**: the best init of the objective in the column.", "",
                   grid.markdown(), ""]
    if not tables:
        md += ["No objective was run with more than one init.", ""]
    return md, tables


SIGNIFICANCE_INTRO = (
    f"Paired over seeds (seed k of both sides shares data order, selection split and student init). Entry in "
    f"row r, column c: ↑ if r's mean is better than c's (higher; lower for a perplexity), ↓ if worse, then the "
    f"paired t-test p-value "
    f"Holm–Bonferroni-corrected within the matrix; **bold** when below {ALPHA}. `seeds differ`: the two cells "
    f"ran different seed sets and are not compared; `n/a`: fewer than 2 seeds. Uncorrected t-test and "
    f"Wilcoxon signed-rank p-values, the mean difference and its 95% CI are in `comparisons.csv`.")


def significance_section(out: Path, comparisons, orders: dict) -> tuple[list[str], Figures]:
    """Sections 3.1 and 3.2: a matrix and a heat map per family of objective and of init comparisons."""
    md, figures = ["## 3. Significance", "", SIGNIFICANCE_INTRO, ""], []
    for kind, heading in (("objectives", "3.1 Objectives"), ("inits", "3.2 Inits")):
        md += [f"### {heading}", ""]
        found = _matrices(out, comparisons, kind, orders, figures)
        md += found or ["No pairs to compare.", ""]
    return md, figures


def _matrices(out: Path, comparisons, kind: str, orders: dict, figures: Figures) -> list[str]:
    """The matrices of one kind, tasks in order; each heat map's (file, caption) is appended to ``figures``."""
    fams = by_family(comparisons, kind)
    shared: dict[tuple, int] = {}
    for fam in fams.values():
        shared[_slot(kind, fam[0].a_cell)] = shared.get(_slot(kind, fam[0].a_cell), 0) + 1
    tasks_seen = task_order({fam[0].task for fam in fams.values()}, orders.get("tasks", ()))
    fam_list = sorted(fams.items(), key=lambda kv: (tasks_seen.index(kv[1][0].task), kv[0]))
    per_task = {t: sum(1 for _, fam in fam_list if fam[0].task == t) for t in tasks_seen}
    md, numbered = [], {}
    for _, fam in fam_list:
        task = fam[0].task
        names, what = _family_names(kind, fam, shared, orders)
        numbered[task] = numbered.get(task, 0) + 1
        name = f"significance-{slug(task)}-{kind}" + (f"-{numbered[task]}" if per_task[task] > 1 else "") + ".png"
        grid = significance_grid(what, fam, names)
        md += [f"#### {what}", "", grid.markdown(), "", detectable_line(fam), ""]
        plot_significance(out / name, what.replace("`", ""), fam, names)
        figures.append((name, what))
    return md


def _slot(kind: str, c) -> tuple:
    """The cells a family compares share this slot; two families in one slot differ in their setting."""
    return (c.task, c.teacher, c.init, c.student) if kind == "objectives" else (c.task, c.teacher, c.label)


def _family_names(kind: str, fam, shared: dict, orders: dict) -> tuple[list[str], str]:
    """(the matrix's rows in order, its heading) of one family."""
    c = fam[0].a_cell
    compared = {x.a for x in fam} | {x.b for x in fam}
    if kind == "objectives":
        names = objective_order(compared, orders.get("objectives", ()))
        what, setting = f"{c.task}: teacher `{c.teacher}`, init `{c.init}`", c.setting
    else:
        names = init_order(compared, orders.get("inits", ()))
        what, setting = f"{c.task}: {c.label}, teacher `{c.teacher}`", c.init_setting
    return names, what + (f", setting `{setting}`" if shared[_slot(kind, c)] > 1 else "")


def plots_section(out: Path, cells, sections, profiles: dict, orders: dict,
                  significance: Figures) -> tuple[list[str], list[Path], dict]:
    """Section 4: the score figures (one per task and teacher/init, or one per task holding every init where the
    init varies), the significance heat maps drawn by section 3, the Pareto plots. Returns the Markdown, the files
    drawn here and {Pareto file: its points}."""
    covered, init_plots = init_figures(out, sections, orders)  # one figure per task where the student init varies
    score_plots = score_figures(out, sections, orders, covered)
    md = ["## 4. Plots", "", "Per-seed scores (points), mean (bar) and 95% t confidence interval per objective; the "
          "dashed red line is the teacher, the dotted grey line the majority class.", ""]
    for name, caption in score_plots:
        md += [f"![{caption}]({name})", ""]
    if init_plots:
        md += ["Student initialisation (paper 002 Table 3): per objective, the inits side by side, each with its "
               "per-seed points, mean and 95% CI.", ""]
    for name, caption in init_plots:
        md += [f"![{caption}]({name})", ""]
    md += ["Significance heat maps (signed −log10 of the Holm-corrected p; red: the row is better, higher or, for a perplexity, lower).", ""]
    for name, caption in significance:
        md += [f"![{caption.replace('`', '')}]({name})", ""]
    pareto_md, pareto = pareto_plots(out, cells, profiles, orders)
    files = [out / name for name, _ in init_plots + score_plots] + [out / name for name in pareto]
    return md + pareto_md, files, pareto


def score_figures(out: Path, sections, orders: dict, covered: set) -> Figures:
    """``scores-<task>[-k].png`` per table section and task, except the (task, teacher) slots an init figure covers."""
    multi, figures = len(sections) > 1, []
    for k, ((teacher, init, student, *_), members) in enumerate(sections, start=1):
        labels_all = objective_order((c.label for c in members), orders.get("objectives", ()))
        for task in task_order((c.task for c in members), orders.get("tasks", ())):
            if (task, teacher) in covered:
                continue
            task_cells = [c for c in members if c.task == task]
            labels = [lb for lb in labels_all if any(c.label == lb for c in task_cells)]
            name = f"scores-{slug(task)}-{k}.png" if multi else f"scores-{slug(task)}.png"
            caption = f"{task}: teacher {teacher}, init {init}"
            plot_scores(out / name, caption, task_cells, labels)
            figures.append((name, caption))
    return figures


def cells_section(cells, orders: dict) -> list[str]:
    """Section 5: every cell with its seeds, mean, CI and config hash."""
    md = ["## 5. Cells", "",
          "| Task | Objective | Init | Teacher | n | Seeds | Mean | 95% CI | Config hash |",
          "|---|---|---|---|---:|---|---:|---|---|"]
    for c in sorted(cells, key=lambda c: (task_order([c.task], orders.get("tasks", ())), c.task, c.teacher,
                                          init_order([c.init], orders.get("inits", ())), c.label, c.config_hash)):
        s = c.stats
        md.append(f"| {c.task} | {c.label.replace('|', '/')} | {c.init} | {c.teacher} | {s['n']} | "
                  f"{' '.join(map(str, c.seeds))} | {fnum(s['mean'], 2)} | "
                  f"{fnum(s['ci_low'], 2)} – {fnum(s['ci_high'], 2)} | `{c.config_hash}` |")
    return md + [""]

"""What `distilbench run` prints when it ends: the per-seed table of dev scores with the signal check, the settings
behind it, and where the time went."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ..config import RunConfig
from ..data.tasks import Task
from ..training.runs.plan import run_settings
from .lm_summary import lm_summary_table
from .tables import seed_table, settings_text, with_settings

if TYPE_CHECKING:
    from ..training.runs.runner import Runner


def print_parts(parts: list) -> None:
    """Print a summary's parts to stdout: tables at least as wide as their titles (not cut at a narrow or captured
    console's 80 columns), lines whole (``soft_wrap``: a line longer than the terminal is not cut by rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for part in parts:
        if isinstance(part, Table) and (part.min_width or 0) > console.width:  # print(width=) caps at the console's
            Console(width=part.min_width).print(part)
        else:
            console.print(part, soft_wrap=isinstance(part, str))


def summary_table(rows: list[dict], task: Task, cfg: RunConfig, precision: str = "fp32") -> list:
    """Per-seed dev scores of each objective side by side, mean ± std, the teacher's and the majority class's score,
    and the signal check: an objective not significantly above the majority class is marked "at chance".

    What to print, in order: the table (a short title, never wrapped), then lines (markup strings) for a console to
    print with ``soft_wrap``: the student, teacher and non-default settings, which can be longer than any terminal,
    and the notes."""
    if task.causal:  # perplexity, lower is better; the signal check is against the none student
        return lm_summary_table(rows, task, cfg, precision)
    from rich.markup import escape

    from ..results.chance import MARK, check_rows

    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["objective"], r["seed"]): r for r in rows}
    checks = {o: check_rows([r for r in rows if r["objective"] == o]) for o in objectives}
    title = with_settings(f"{task.name} dev {task.main_score} (%)", settings_text(run_settings(cfg, precision)))
    caption = f"student {rows[0]['student'] if rows else '?'}, teacher {cfg.teacher}"
    table = seed_table(title, objectives, seeds, by, 100, {o: MARK for o in objectives if checks[o].at_chance})
    if rows:
        table.add_row("teacher", *[f"{100 * rows[0]['teacher_score']:.2f}"] * len(objectives))
    majority = next((c.majority for c in checks.values() if c.applies and not np.isnan(c.majority)), None)
    floor = next((c.floor for c in checks.values()), "majority class")  # extractive QA: its question-blind floor
    if majority is not None:
        table.add_row(floor, *[f"{majority:.2f}"] * len(objectives))
    notes = []
    low = [o for o in objectives if checks[o].at_chance]
    if low:
        what = ("every objective is" if len(low) == len(objectives) else ", ".join(low) + (" is" if len(low) == 1 else " are"))
        notes.append(f"[bold red]{MARK}: {what} not significantly above the {floor} ({majority:.2f}) on "
                     f"{task.name} dev (one-sided, α = 0.05, over seeds and over dev examples)"
                     + (": no objective can be ranked on this task at this size.[/]" if len(low) == len(objectives)
                        else ": never ranked.[/]"))
    unchecked = [o for o in objectives if checks[o].applies and checks[o].at_chance is None]
    if unchecked:
        notes.append(f"not checked against the {floor}: {', '.join(unchecked)} ({checks[unchecked[0]].reason})")
    return [table, escape(caption), *notes]  # "mpnet-base[layers:1,2,3]" is not markup


def time_breakdown(runner: Runner) -> list[str]:
    """The closing lines of `distilbench run`: seconds in each phase. teacher: fine-tuning or reading it (and a team),
    its dev score, loading it; caches: the teacher-output caches (built or opened); Stage I: shared stages trained
    (TED's filters; read from their cache they cost nothing here); students: training, evaluating and storing each
    run, less the two before; total: from the runner's start (reading the data included) to now."""
    total = time.perf_counter() - runner.started
    parts = [*runner.timings.items(), ("total", total)]
    return ["time (s):", *(f"  {name:<9}{seconds:9.1f}" for name, seconds in parts)]

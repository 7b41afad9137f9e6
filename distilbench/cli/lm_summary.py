"""What `distilbench run` prints for a causal-LM task: per-seed dev perplexity (lower is better), the teacher's,
how it was measured (window, stride, which split), and the signal check against the ``none`` student
(:mod:`distilbench.results.lm_signal`)."""
from __future__ import annotations

import numpy as np

from ..config import RunConfig
from ..data.lm_text import evaluation_text
from ..training.runs.plan import run_settings
from .tables import seed_table, settings_text, with_settings


def lm_summary_table(rows: list[dict], task, cfg: RunConfig, precision: str = "fp32") -> list:
    """The table (best mean, lowest perplexity, in bold among the cells that pass the signal check), then lines."""
    from rich.markup import escape

    from ..results.lm_signal import MARK, check_against_none

    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["objective"], r["seed"]): r for r in rows}
    none_rows = [r for r in rows if r["objective"] == "none"]
    checks = {o: check_against_none([r for r in rows if r["objective"] == o], none_rows)
              for o in objectives if o != "none"}
    means = {o: float(np.mean([by[(o, s)]["score"] for s in seeds if (o, s) in by])) for o in objectives}
    ranked = [o for o in objectives if o == "none" or checks[o].below is not False]
    best = min(ranked, key=lambda o: means[o]) if ranked else None  # lower is better
    title = with_settings(f"{task.name} dev perplexity (lower is better)", settings_text(run_settings(cfg, precision)))
    table = seed_table(title, objectives, seeds, by, 1, {o: MARK for o in checks if checks[o].below is False}, best)
    extra = (rows[0].get("extra") or {}).get("lm", {}) if rows else {}
    if rows:
        table.add_row("teacher", *[f"{rows[0]['teacher_score']:.2f}"] * len(objectives))
    lines = [escape(f"student {rows[0]['student'] if rows else '?'}, teacher {cfg.teacher}"),
             f"{evaluation_text(extra)}; {task.provenance}"]
    if extra.get("teacher_note"):
        lines.append(f"[bold]{escape(extra['teacher_note'])}[/]")
    for o, c in checks.items():
        p_ex = "n/a" if c.example_p is None else f"{c.example_p:.3f}"
        verdict = {True: "below none", False: MARK, None: "not checked"}[c.below]
        lines.append(f"signal check {o}: none - {o} = {c.delta:+.2f} perplexity over {c.seeds} seed(s), one-sided p "
                     f"{c.seed_p:.3f} (seeds), {p_ex} (windows): {verdict}" + (f" ({c.reason})" if c.reason else ""))
    return [table, *lines]

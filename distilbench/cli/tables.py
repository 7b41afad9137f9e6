"""The per-seed table and titles both `run` summaries print (sentence tasks: :mod:`.summary`; causal LM:
:mod:`.lm_summary`)."""
from __future__ import annotations

import numpy as np


def settings_text(settings: dict) -> str:
    """``name=value`` of the non-default settings, sorted, for titles ("" when every option is at its default)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def with_settings(title: str, settings: str) -> str:
    """A table title with the run's non-default settings as its second line (a cut-down run says so in its title,
    so a copied table cannot pass for a full-size one)."""
    from rich.markup import escape

    return title + (f"\nsettings: {escape(settings)}" if settings else "")  # a title is read as markup


def seed_table(title: str, objectives: list[str], seeds: list[int], by: dict, scale: float, marks: dict[str, str],
               best: str | None = None):
    """The per-seed table both `run` summaries print: a column per objective, a row per seed, then mean ± std (scores
    × ``scale``), ``best`` in bold, `` (MARK)`` after each objective ``marks`` names; at least as wide as its title's
    longest line, so the title never wraps (print it at least that wide: :func:`print_parts`)."""
    from rich.table import Table

    table = Table(title=title, min_width=max(len(line) for line in title.splitlines()))
    table.add_column("seed")
    for o in objectives:
        table.add_column(o, justify="right")
    for s in seeds:
        table.add_row(str(s), *[f"{scale * by[(o, s)]['score']:.2f}" if (o, s) in by else "-" for o in objectives])
    stats = []
    for o in objectives:
        scores = np.array([scale * by[(o, s)]["score"] for s in seeds if (o, s) in by])
        cell = f"{scores.mean():.2f} ± {scores.std(ddof=1) if len(scores) > 1 else 0.0:.2f}"
        stats.append((f"[bold]{cell}[/]" if o == best else cell) + (f" ({marks[o]})" if o in marks else ""))
    table.add_row("mean ± std", *stats, end_section=True)
    return table

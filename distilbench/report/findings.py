"""The README's Findings table, generated from the committed reports' ``claims.csv``: every claim's computed verdict,
with a link to its report. A claim tested on one task is one row; a claim tested on several is one row, its
across-task verdict, with every task's own verdict in the "Per task" column (each report's Claims table has them in
full). Nothing in it is typed by hand; `distilbench findings` writes
it between two markers of the README, and `distilbench findings --check` fails when the README differs."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from ..results.claims import ACROSS  # the task name of a claim's across-task row

BEGIN = "<!-- findings: written by `distilbench findings` from reports/*/claims.csv; edits here are overwritten -->"
END = "<!-- /findings -->"


def _f(text: str, digits: int = 2) -> str:
    try:
        x = float(text)
    except ValueError:
        return "n/a"
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def findings_table(reports: Path) -> list[str]:
    """Markdown lines of the table: per report folder under ``reports`` with claims, one row per claim (its across-task
    row where it has one, with each task's verdict beside it), else one per claim × task."""
    lines = ["| Report | Claim | Paper | Paper's numbers | Task | Ours (claimed better vs worse; Δ, n) | Holm p (family) | "
             "Verdict | Per task | Per example |", "|---|---|---|---|---|---|---:|---|---|---|"]
    for folder in sorted(p for p in reports.iterdir() if (p / "claims.csv").is_file()):
        with (folder / "claims.csv").open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        across = {r["id"] for r in rows if r["task"] == ACROSS}
        for r in rows:
            if r["id"] in across and r["task"] != ACROSS:
                continue  # summed up in its across-task row
            per_task = "; ".join(f"{t['task']}: {t['verdict']}" for t in rows
                                 if t["id"] == r["id"] and t["task"] != ACROSS) if r["task"] == ACROSS else "-"
            if r["task"] == ACROSS and r["diff"]:  # no one mean per cell over several tasks: the mean paired difference
                ours = f"{r['better']} vs {r['worse']}; mean Δ {_f(r['diff'])} over task × seed pairs, n={r['n']}"
            elif r["better_mean"]:
                ours = (f"{r['better']} {_f(r['better_mean'])} vs {r['worse']} {_f(r['worse_mean'])}; "
                        f"Δ {_f(r['diff'])}, n={r['n']}")
            else:
                ours = "cells missing"
            p = f"{float(r['p_holm']):.3g} ({r['family_size']})" if r["p_holm"] else "n/a"
            lines.append(f"| [{folder.name}]({reports.name}/{folder.name}/README.md) | {r['id']}: {r['claim']} | {r['paper']} | "
                         f"{r['paper_numbers'] or '-'} | {r['task']} | {ours} | {p} | **{r['verdict']}**: {r['reason']} | "
                         f"{per_task} | {r['examples']} |")
    return lines


def render(readme: str, reports: Path) -> str:
    """``readme`` with the text between the markers replaced by the table (the markers must be there, once each)."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"the README needs the two findings markers, once each, in order:\n{BEGIN}\n{END}")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return head + BEGIN + "\n" + "\n".join(findings_table(reports)) + "\n" + END + tail


__all__ = ["BEGIN", "END", "findings_table", "render"]

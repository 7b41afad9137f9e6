"""The README's Findings table, generated from the committed reports' ``claims.csv``: every claim's computed verdict
on every task, one row each, with a link to its report. Nothing in it is typed by hand; `distilbench findings` writes
it between two markers of the README, and `distilbench findings --check` fails when the README differs."""
from __future__ import annotations

import csv
import math
from pathlib import Path

BEGIN = "<!-- findings: written by `distilbench findings` from reports/*/claims.csv; edits here are overwritten -->"
END = "<!-- /findings -->"


def _f(text: str, digits: int = 2) -> str:
    try:
        x = float(text)
    except ValueError:
        return "n/a"
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def findings_table(reports: Path) -> list[str]:
    """Markdown lines of the table: one row per claim × task of every report folder under ``reports`` with claims."""
    lines = ["| Report | Claim | Paper | Paper's numbers | Task | Ours (claimed better vs worse; Δ, n) | Holm p (family) | "
             "Verdict | Per example |", "|---|---|---|---|---|---|---:|---|---|"]
    for folder in sorted(p for p in reports.iterdir() if (p / "claims.csv").is_file()):
        with (folder / "claims.csv").open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            ours = (f"{r['better']} {_f(r['better_mean'])} vs {r['worse']} {_f(r['worse_mean'])}; "
                    f"Δ {_f(r['diff'])}, n={r['n']}") if r["better_mean"] else "cells missing"
            p = f"{float(r['p_holm']):.3g} ({r['family_size']})" if r["p_holm"] else "n/a"
            lines.append(f"| [{folder.name}]({reports.name}/{folder.name}/README.md) | {r['id']}: {r['claim']} | {r['paper']} | "
                         f"{r['paper_numbers'] or '-'} | {r['task']} | {ours} | {p} | **{r['verdict']}**: {r['reason']} | "
                         f"{r['examples']} |")
    return lines


def render(readme: str, reports: Path) -> str:
    """``readme`` with the text between the markers replaced by the table (the markers must be there, once each)."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ValueError(f"the README needs the two findings markers, once each, in order:\n{BEGIN}\n{END}")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return head + BEGIN + "\n" + "\n".join(findings_table(reports)) + "\n" + END + tail


__all__ = ["BEGIN", "END", "findings_table", "render"]

"""The report's CSVs: ``cells.csv`` (one row per cell, ending with the size/speed/cost columns of
:data:`distilbench.report.leaderboard.CSV_HEADER`), ``comparisons.csv`` (one row per compared pair) and
``per_example.csv`` (the per-example tests): the numbers of the tables unrounded (4 decimals, p-values 6 significant
digits)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .format import fcsv, fpcsv
from .leaderboard import CSV_HEADER, csv_values


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


CELLS_HEADER = ["task", "objective", "label", "init", "teacher", "student", "config_hash", "setting", "main_score", "n",
                "seeds", "mean", "std", "ci_low", "ci_high", "scores", "teacher_score", "majority", "chance_seed_p",
                "chance_example_p", "at_chance"]


def cells_csv_rows(cells, profiles: dict | None = None) -> list[list[str]]:
    out = []
    for c in cells:
        s = c.stats
        out.append([c.task, c.objective, c.label, c.init, c.teacher, c.student, c.config_hash, c.setting, c.main_score,
                    str(s["n"]), " ".join(str(x) for x in c.seeds), fcsv(s["mean"]), fcsv(s["std"]), fcsv(s["ci_low"]),
                    fcsv(s["ci_high"]), " ".join(fcsv(c.scores[x]) for x in c.seeds),
                    " ".join(fcsv(t) for t in c.teacher_scores), *_chance_csv(c),
                    *csv_values((profiles or {}).get(c.key))])  # size, speed, cost: appended, old columns keep their place
    return out


def cells_header() -> list[str]:
    return CELLS_HEADER + CSV_HEADER


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


def write_csvs(out: Path, cells, profiles: dict, comparisons, example_comparisons=None) -> None:
    """``cells.csv`` and ``comparisons.csv`` into ``out``; ``per_example.csv`` too when ``example_comparisons`` is given."""
    if example_comparisons is not None:
        write_csv(out / "per_example.csv", PER_EXAMPLE_HEADER, per_example_csv_rows(example_comparisons))
    write_csv(out / "cells.csv", cells_header(), cells_csv_rows(cells, profiles))
    write_csv(out / "comparisons.csv", COMPARISONS_HEADER, comparisons_csv_rows(comparisons))

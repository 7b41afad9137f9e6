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

The parts: :mod:`.format` (numbers, :class:`Grid`), :mod:`.tables`, :mod:`.sections` (sections 1–5), :mod:`.plots`,
:mod:`.csvs`, :mod:`.theta` (section 6); this module writes the header and runs the sections in order. Nothing here
prints: ``distilbench report`` (:mod:`distilbench.cli.report`) prints the tables of the returned :class:`Report`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy
import scipy

from .. import __version__
from ..data.lm_text import evaluation_text
from ..data.tasks import get_task
from ..errors import UsageError
from ..results.chance import check_rows
from ..results.claims import evaluate, parse_claims
from ..results.lm_signal import as_chance
from ..results.per_example import compare_examples
from ..results.pooling import first_token_caveat
from ..results.revisions import revisions
from ..results.rows import is_result, row_dicts, rows_by_cell
from ..results.stats import cells_from_rows, compare
from .claims import claims_section, write_claims_csv
from .csvs import CELLS_HEADER, write_csvs  # noqa: F401 - CELLS_HEADER: the cells.csv columns (tests import it here)
from .format import Grid, extra_of
from .leaderboard import cell_profiles
from .sections import cells_section, inits_section, objectives_section, plots_section, significance_section
from .tables import modal_n_of, per_example_section, score_sections, settings_heading
from .theta import theta_section

_GENERATED = ("README.md", "cells.csv", "comparisons.csv", "report.json")
_OPTIONAL = ("per_example.csv", "claims.csv")  # written only with --per-example / declared claims; removed otherwise
_GENERATED_GLOBS = ("scores-*.png", "inits-*.png", "significance-*.png", "theta-*.png", "pareto-*.png")


@dataclass
class Report:
    out: Path
    cells: list  # list[stats.Cell]
    comparisons: list  # list[stats.Comparison]
    tables: list[Grid]  # table 1 sections, then table 2
    files: list[Path]
    pareto: dict = field(default_factory=dict)  # Pareto plot file name -> the points it plots (leaderboard.Point)
    example_comparisons: list = field(default_factory=list)  # per_example.ExampleComparison, with --per-example


def with_checks(cells, rows) -> list:
    """The cells with their signal check (:mod:`distilbench.results.chance`) and non-default settings, from their rows
    (grouped as :func:`~distilbench.results.stats.cells_from_rows` groups them)."""
    by = rows_by_cell(rows)
    return [dataclasses.replace(c, chance=_lm_check(c, cells, by) if not c.higher_is_better else check_rows(by[c.key]),
                                settings=_settings_of(by[c.key]), pooling_caveat=first_token_caveat(by[c.key]),
                                revisions=revisions(by[c.key]))
            for c in cells]


def _lm_check(cell, cells, by):
    """A lower-is-better (causal-LM) cell: its signal check is against the `none` cell of its task, init, teacher and
    student (:mod:`distilbench.results.lm_signal`), not a majority class."""
    if cell.objective == "none":
        return as_chance(by[cell.key], None)
    base = next((c for c in cells if c.objective == "none" and c.key[0] == cell.key[0] and c.key[2:5] == cell.key[2:5]), None)
    return as_chance(by[cell.key], by[base.key] if base is not None else [])


# the defaults of the identity's hyper-parameters when rows did not store their settings yet (before 2026-12): those
# rows are read against the defaults of their time, never today's
_LEGACY_HPARAM_DEFAULTS = {"epochs": 3.0, "lr": 5e-5, "batch_size": 16, "max_length": 128, "warmup_ratio": 0.1,
                           "weight_decay": 0.01, "max_grad_norm": 1.0, "selection_fraction": 0.1, "select_best_epoch": True,
                           "max_train_examples": None}


def _settings_of(rows: list[dict]) -> tuple[tuple[str, str], ...]:
    """Non-default settings shared by a cell's rows: stored ones (``extra.settings``), else those of the identity's
    hyper-parameters (rows written before settings were stored)."""
    defaults = _LEGACY_HPARAM_DEFAULTS
    found = None
    for r in rows:
        stored = extra_of(r).get("settings")
        if stored is None:
            hp = (r.get("params") or {}).get("hparams") or {}
            stored = {k: v for k, v in hp.items() if k in defaults and v != defaults[k]}
        items = {(str(k), str(v)) for k, v in stored.items()}
        found = items if found is None else found & items
    return tuple(sorted(found or ()))


def _provenance(cells) -> list[tuple[str, str]]:
    out = []
    for t in sorted({c.task for c in cells}):
        try:
            note = get_task(t).provenance
        except UsageError:
            note = None
        if note:
            out.append((t, note))
    return out


def _pooling(rows: list[dict]) -> list[str]:
    """Which sentence representation the sentence-task cells' heads (and Hid-CLS, TED's filter heads) read, from the
    rows: rows stored before the pooling was recorded used the first token (cls)."""
    found: dict[str, int] = {}
    for r in rows:
        try:
            if not get_task(str(r.get("task"))).sentence_level:
                continue
        except UsageError:
            pass
        mode = extra_of(r).get("pooling") or "cls"
        found[mode] = found.get(mode, 0) + 1
    if not found:
        return []
    words = {"cls": "cls (the first token)", "mean": "mean (over the real tokens)"}
    text = "; ".join(f"{words.get(m, m)}: {n} run{'s' if n != 1 else ''}" for m, n in sorted(found.items()))
    return [f"- **Pooling (the sentence representation of heads, Hid-CLS and TED's filter heads):** {text}"]


def _general_students(rows: list[dict]) -> list[str]:
    """How each general-student init was made (task-agnostic distillation, `distilbench pretrain`), from what its
    rows recorded (``extra.general_student``): one line per init, in the rows' order."""
    found: dict[str, dict] = {}
    for r in rows:
        if (made := extra_of(r).get("general_student")) and str(r.get("init")) not in found:
            found[str(r.get("init"))] = made
    out = []
    for init, g in found.items():
        loss = g.get("held_out_loss") or {}
        scored = (f"; held-out distillation loss {loss['before']:.4f} before, {loss['after']:.4f} after"
                  if loss.get("before") is not None and loss.get("after") is not None else "")
        out.append(f"- **General student `{init}`:** {g.get('objective')} from `{g.get('teacher')}` into a "
                   f"`{g.get('init')}` student on {g.get('corpus')}, {g.get('tokens') or 0:,} tokens ({g.get('steps')} "
                   f"steps of {g.get('batch_size')} × {g.get('max_length')}, lr {g.get('lr')}, {g.get('precision')}){scored}; "
                   f"key `{g.get('key')}`, revision `{g.get('git_rev')}`")
    return out


def _lm_evaluation(rows: list[dict]) -> list[str]:
    """Per causal-LM task, how its perplexity was measured, from the stored rows (a perplexity depends on the stride,
    so every report states it): window length, stride, windows and tokens scored; one line per distinct setting."""
    found = {(str(r.get("task")), evaluation_text(lm)) for r in rows
             if (lm := extra_of(r).get("lm") or {}).get("eval_stride") is not None}
    return [f"- **Evaluation `{task}`:** {text}" for task, text in sorted(found)]


def _versions(rows: list[dict]) -> str:
    found: dict[str, set[str]] = {}
    for r in rows:
        for k, v in (r.get("versions") or {}).items():
            found.setdefault(str(k), set()).add(str(v))
    return "; ".join(f"{k} {' / '.join(sorted(v))}" for k, v in sorted(found.items())) or "not recorded"


def _builder_versions() -> str:
    import matplotlib

    return f"distilbench {__version__}, matplotlib {matplotlib.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}"


def fingerprint(rows: list[dict]) -> str:
    lines = sorted(f"{r.get('run_key') or (r.get('config_hash'), r.get('seed'))}\t{float(r['score'])!r}" for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def header(rows: list[dict], cells, *, command: str, results: str | None, title: str | None, folder: str,
           date: datetime, modal_n: int) -> list[str]:
    """The README's title and what it was made from: command, rebuild line, date, results, revisions, versions."""
    revs = sorted({str(r.get("git_rev")) for r in rows if r.get("git_rev")})
    md = [f"# {title or 'distilbench report'}", "", f"Command: `{command}`", ""]
    if results:
        md += [f"Rebuild: `distilbench report {shlex.quote(folder)}`", ""]
    lm_units = "; perplexity in its own units, lower is better" if any(not c.higher_is_better for c in cells) else ""
    return md + [
        f"Date: {date.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}", "",
        f"- **Results:** `{results or '(rows given directly)'}`: {len(rows)} runs in {len(cells)} cells, "
        f"fingerprint `{fingerprint(rows)}` (sha256 of the sorted run keys and scores)",
        f"- **Git revision(s) of the runs:** {', '.join(f'`{r}`' for r in revs) or 'not recorded'}",
        f"- **Package versions of the runs:** {_versions(rows)}",
        f"- **Report built with:** {_builder_versions()}",
        "- **Config hashes:** one per cell (the run identity without the seed), in [§5 Cells](#5-cells) and "
        "`cells.csv`",
        f"- **Settings that differ from the defaults:** {settings_heading(cells) or 'none'}",
        *[f"- **Task `{t}`:** {p}" for t, p in _provenance(cells)],
        *_pooling(rows),
        *_general_students(rows),
        *_lm_evaluation(rows),
        # a causal LM's from-scratch teacher (distilbench.models.scratch), said wherever its results are shown
        *sorted({f"- **Teacher `{r['teacher']}`:** {(extra_of(r).get('lm') or {})['teacher_note']}" for r in rows
                 if (extra_of(r).get("lm") or {}).get("teacher_note")}),
        "",
        f"Scores are the dev main score × 100{lm_units} (mean ± std over seeds, "
        f"std with ddof=1; n={modal_n} seeds unless marked). A label like `kd [temperature=4.0]` names what tells two configurations of one objective apart.",
        ""]


def _checked_cells(rows: Any, results: str | None) -> tuple[list[dict], list, dict]:
    """(the finished student rows, their cells with signal checks and settings, {cell key: its profile})."""
    rows = [r for r in row_dicts(rows) if is_result(r)]
    cells = cells_from_rows(rows)
    if not cells:
        raise UsageError(f"no finished student runs in {results or 'the given rows'}: nothing to report; "
                         "run `distilbench run` or `distilbench suite` first")
    cells = with_checks(cells, rows)
    return rows, cells, cell_profiles(cells, rows)


def _clear(out: Path) -> None:
    """Remove what an earlier build wrote into ``out`` (a rebuild leaves no stale figure behind)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in _GENERATED + _OPTIONAL:
        (out / name).unlink(missing_ok=True)
    for pattern in _GENERATED_GLOBS:
        for stale in sorted(out.glob(pattern)):
            stale.unlink()


def _write_inputs(out: Path, inputs: dict) -> None:
    """``report.json``: what a rebuild needs to write the same report (``distilbench report DIR``)."""
    (out / "report.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def build_report(rows: Any, out: str | Path, *, command: str, results: str | None = None,
                 orders: dict[str, Sequence[str]] | None = None, title: str | None = None,
                 date: datetime | None = None, per_example: int = 0, folder: str | None = None,
                 claims: list | None = None) -> Report:
    """Write the report of ``rows`` (``ResultsStore.rows()`` or ``.dataframe()``) into ``out``; print nothing.

    ``command``: the exact command line to print in the header. ``orders``: preferred order of ``tasks``,
    ``objectives`` and ``inits`` (a suite's), else none, kd, then alphabetical. ``per_example``: bootstrap resamples
    for the per-example tests of :mod:`distilbench.results.per_example` (section 3.3 and ``per_example.csv``); 0
    leaves them out. ``folder``: the report folder as the ``Rebuild:`` line and ``report.json`` name it (default
    ``out``; a rebuild of a moved copy passes the name it was first written under, so that every file comes out the
    same). ``claims``: the declared claims (plain data, a suite's ``claims:``; :mod:`distilbench.results.claims`),
    whose computed verdicts open the README and fill ``claims.csv``; kept in ``report.json`` for a rebuild.
    """
    declared = parse_claims(claims, "the report's claims")

    orders = dict(orders or {})
    rows, cells, profiles = _checked_cells(rows, results)
    out = Path(out)
    _clear(out)
    folder = str(out) if folder is None else folder
    modal_n = modal_n_of(cells)
    sections = score_sections(cells, orders)
    md = header(rows, cells, command=command, results=results, title=title, folder=folder,
                date=date or datetime.now(timezone.utc), modal_n=modal_n)
    claims_at = len(md)  # the claims section opens the report, once the per-example tests it shows are known
    part, tables = objectives_section(sections, profiles, orders, modal_n)
    md += part
    part, init_tables = inits_section(cells, orders, modal_n)
    md += part
    comparisons = (compare(cells, "objectives", orders.get("objectives", ()))
                   + compare(cells, "inits", orders.get("inits", ())))
    part, significance = significance_section(out, comparisons, orders)
    md += part
    examples = []
    if per_example:
        examples = compare_examples(rows, comparisons, per_example)
        md += per_example_section(examples, per_example, orders)
    md[claims_at:claims_at] = claims_section(verdicts := evaluate(declared, cells, examples) if declared else [])
    part, plot_files, pareto = plots_section(out, cells, sections, profiles, orders, significance)
    md += part + cells_section(cells, orders)
    theta_md, theta_files = theta_section(rows, out)
    (out / "README.md").write_text("\n".join(md + theta_md), encoding="utf-8")
    _write_inputs(out, {"command": command, "title": title, "results": results, "folder": folder,
                        "orders": {k: list(v) for k, v in sorted(orders.items())},
                        **({"per_example": per_example} if per_example else {}),
                        **({"claims": [c.as_dict() for c in declared]} if declared else {})})
    write_csvs(out, cells, profiles, comparisons, examples if per_example else None)
    if declared:
        write_claims_csv(out, verdicts)
    files = ([out / n for n in _GENERATED] + ([out / "per_example.csv"] if per_example else [])
             + ([out / "claims.csv"] if declared else [])
             + [out / name for name, _ in significance] + plot_files + theta_files)
    return Report(out, cells, comparisons, tables + init_tables, files, pareto, examples)


__all__ = ["build_report", "Report", "Grid", "with_checks", "fingerprint"]

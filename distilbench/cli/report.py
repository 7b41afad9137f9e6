"""`distilbench report`: tables, paired significance and plots from the results store, written to one folder
(:mod:`distilbench.report.build` writes it; :func:`print_report` prints its tables). ``distilbench report DIR``
rebuilds the folder DIR from its ``report.json``; ``--results R --out DIR`` writes a new one (reusing what DIR's
``report.json`` says, if it names the same results store).

Importing this module, and running the command, imports no torch (a test says so).
"""
from __future__ import annotations

import json
import math
import os
import shlex
from pathlib import Path
from typing import Any, Sequence

from ..config import read_yaml
from ..errors import UsageError
from ..report.format import ALPHA
from ..results.backends import display, is_url
from ..results.store import ResultsStore

DEFAULT_OUT = "reports/latest"
BOOTSTRAP_SAMPLES = 2000  # = results.per_example.BOOTSTRAP_SAMPLES (not imported: `report --help` stays light)


def add_parser(sub) -> None:
    report = sub.add_parser("report", allow_abbrev=False,
                            help="tables, paired significance tests and plots of stored results, written to a folder")
    report.add_argument("folder", nargs="?", default=None, metavar="DIR",
                        help="rebuild the report folder DIR exactly as its report.json says (title, order, options, "
                             "results store); instead of --results/--out")
    report.add_argument("--results", default=None, help="results store: an SQLite file or a postgresql+psycopg2:// URL (default: runs/results.sqlite)")
    report.add_argument("--out", default=None, help=f"folder to write the report into (default: {DEFAULT_OUT})")
    report.add_argument("--per-example", action="store_true",
                        help="add per-example paired tests on the stored dev predictions: bootstrap over examples and "
                             "McNemar per seed (section 3.3, per_example.csv)")
    report.add_argument("--claims", default=None, metavar="FILE[:SCALE]",
                        help="a YAML file whose `claims:` list (a suite file's; with :SCALE, that scale's own claims "
                             "where it declares them) says what the report's cells are to test; their verdicts open the "
                             "report and fill claims.csv (kept in report.json for a rebuild)")
    report.add_argument("--bootstrap-samples", type=int, default=None, metavar="N",
                        help=f"bootstrap resamples of --per-example (default {BOOTSTRAP_SAMPLES}); a number > 0 implies "
                             "--per-example, 0 leaves the tests out of a report that had them")


def main(args: dict[str, Any], argv: Sequence[str]) -> int:
    """Run `report` with the parsed flags; the exact command line goes into the report header."""
    line = shlex.join(["distilbench", *argv])
    if args.get("bootstrap_samples") is not None and args["bootstrap_samples"] < 0:
        raise UsageError(f"--bootstrap-samples must be a whole number >= 0, 0 meaning no per-example tests "
                         f"(got {args['bootstrap_samples']})")
    if args.get("folder") is not None:
        if args.get("results") is not None or args.get("out") is not None:
            raise UsageError("give either a report folder DIR (rebuilt from its report.json) or --results/--out, not both")
        return rebuild_main(args["folder"], line, args.get("per_example", False), args.get("bootstrap_samples"),
                            read_claims(args.get("claims")))
    return report_main(args["results"] or "runs/results.sqlite", args["out"] or DEFAULT_OUT, line,
                       args.get("per_example", False), args.get("bootstrap_samples"), read_claims(args.get("claims")))


def read_claims(spec: str | None) -> list | None:
    """The ``claims:`` list of a YAML file (a suite's; ``FILE:SCALE``: that scale's claims where it has its own),
    checked; None when no file is given."""
    if spec is None:
        return None
    from ..results.claims import parse_claims

    path, scale = (spec.rsplit(":", 1) if ":" in spec and not Path(spec).is_file() else (spec, None))
    data = read_yaml(path, "--claims file")
    if not isinstance(data, dict):
        raise UsageError(f"--claims {path}: the file declares no `claims:` list")
    scales = data.get("scales") if isinstance(data.get("scales"), dict) else {}
    if scale is not None and scale not in scales:
        raise UsageError(f"--claims {spec}: {path} has no scale {scale!r}; its scales: {', '.join(map(str, scales)) or 'none'}")
    own = scales.get(scale) if scale is not None else None
    claims = own["claims"] if isinstance(own, dict) and "claims" in own else data.get("claims")
    if not claims:
        raise UsageError(f"--claims {spec}: the file declares no `claims:` list")
    if any(isinstance(c, dict) and any(isinstance(v, dict) and str(v.get("init", "")).startswith("general:") for v in c.values())
           for c in claims):  # general:NAME -> the cells' pretrained:OUT/NAME (the suite's modules load torch: only then)
        from ..suite import claims_as_stored

        claims = claims_as_stored(data, path, scale, claims)
    try:
        parse_claims(claims, spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return claims


def report_main(results: str, out: str, command: str, per_example: bool = False, bootstrap_samples: int | None = None,
                claims: list | None = None) -> int:
    if not is_url(results) and not Path(results).is_file():
        raise UsageError(f"no results file at {results}; run `distilbench run` first or pass --results PATH")
    with ResultsStore(results) as store:
        rows = store.rows()
    results = display(results)  # a URL's password never reaches the report
    title, orders, samples = None, None, 0
    previous = Path(out) / "report.json"
    if previous.is_file():  # rebuilding a report (a suite's): keep what shaped it, so the rebuild is exact
        try:
            inputs = json.loads(previous.read_text(encoding="utf-8"))
        except ValueError:
            inputs = {}
        if isinstance(inputs, dict) and inputs.get("results") == str(results):
            if not per_example and bootstrap_samples is None:  # a changed per-example choice is a new command
                command = inputs.get("command") or command
            title, orders = inputs.get("title"), inputs.get("orders")
            samples = int(inputs.get("per_example") or 0)
            claims = inputs.get("claims") if claims is None else claims
    if bootstrap_samples is not None:  # asked now: overrides what the folder's report had (0: leave them out)
        samples = bootstrap_samples
    elif per_example:
        samples = samples or BOOTSTRAP_SAMPLES
    from ..report.build import build_report

    print_report(build_report(rows, out, command=command, results=results, title=title, orders=orders,
                              per_example=samples, claims=claims))
    return 0


def stored_results(folder: Path, inputs: dict) -> Path:
    """The results store of the report in ``folder``, from its ``report.json``: a store that lay inside the report
    folder it was written to (``results`` under ``folder``, both relative or both absolute) is read from inside
    ``folder`` now, wherever that lies; any other by the path recorded (a relative one from the current folder)."""
    results, first = inputs.get("results"), inputs.get("folder")
    if first is not None and Path(results).is_absolute() == Path(first).is_absolute():
        inside = os.path.relpath(os.path.normpath(results), os.path.normpath(first))
        if inside != os.pardir and not inside.startswith(os.pardir + os.sep):
            return folder / inside
    return Path(results)


def rebuild_main(folder: str, command: str, per_example: bool = False, bootstrap_samples: int | None = None,
                 claims: list | None = None) -> int:
    """`distilbench report DIR`: rewrite the report in DIR from its report.json and its results store. The header's
    command stays the one that first wrote it, unless this one changes the per-example tests (then it is ``command``)."""
    where = Path(folder)
    try:
        inputs = json.loads((where / "report.json").read_text(encoding="utf-8"))
    except OSError:
        raise UsageError(f"{where / 'report.json'} does not exist: `distilbench report DIR` rebuilds a report folder "
                         f"written before; for a new report give --results RESULTS --out DIR") from None
    except ValueError as exc:
        raise UsageError(f"{where / 'report.json'} is not valid JSON ({exc}); rebuild it with --results RESULTS --out DIR") from None
    if not isinstance(inputs, dict) or not isinstance(inputs.get("results"), str) or not inputs.get("command"):
        raise UsageError(f"{where / 'report.json'} names no results store and command; rebuild it with --results RESULTS --out DIR")
    store = stored_results(where, inputs)
    if not store.is_file():
        raise UsageError(f"no results file at {store} (report.json's results {inputs['results']!r}, folder "
                         f"{inputs.get('folder')!r}); pass --results PATH --out {folder} instead")
    with ResultsStore(store) as db:
        rows = db.rows()
    samples = int(inputs.get("per_example") or 0)
    if bootstrap_samples is not None:  # asked now: overrides what the folder's report had (0: leave them out)
        samples = bootstrap_samples
    elif per_example:
        samples = samples or BOOTSTRAP_SAMPLES
    if not per_example and bootstrap_samples is None:  # a changed per-example choice is a new command
        command = inputs["command"]
    from ..report.build import build_report

    print_report(build_report(rows, where, command=command, results=inputs["results"], title=inputs.get("title"),
                              orders=inputs.get("orders"), per_example=samples, folder=inputs.get("folder", str(where)),
                              claims=inputs.get("claims") if claims is None else claims))
    return 0


def rich_table(grid):
    """A report table (:class:`~distilbench.report.format.Grid`) as a rich Table: the cells of its Markdown."""
    from rich.table import Table

    table = Table(title=grid.title.replace("`", ""))
    for i, h in enumerate(grid.header):
        table.add_column(h, justify="right" if grid.right(i) else "left")
    for r, row in enumerate(grid.rows):
        table.add_row(*[f"[bold]{t}[/]" if (r, c) in grid.bold else t for c, t in enumerate(row)])
    return table


def print_report(report, console=None) -> None:
    """The terminal summary of a written report: its tables, per family how many pairs are significant, where it is."""
    from rich.console import Console

    from ..results.stats import by_family

    console = console or Console()
    for grid in report.tables:
        console.print(rich_table(grid))
    for kind in ("objectives", "inits"):
        for family, fam in sorted(by_family(report.comparisons, kind).items()):
            significant = sum(1 for x in fam if not math.isnan(x.holm_p) and x.holm_p < ALPHA)
            mismatched = sum(1 for x in fam if x.result.mismatched_seeds)
            console.print(f"{kind} {family}: {significant} of {len(fam)} pairs significant "
                          f"(Holm p < {ALPHA})" + (f", {mismatched} with different seeds" if mismatched else ""))
    for family, fam in sorted(by_family(report.example_comparisons).items()):
        tested = [x for x in fam if not math.isnan(x.holm_p)]
        significant = sum(1 for x in tested if x.holm_p < ALPHA)
        console.print(f"per-example bootstrap {family}: {significant} of {len(fam)} pairs significant "
                      f"(Holm p < {ALPHA})" + (f", {len(fam) - len(tested)} n/a" if len(tested) < len(fam) else ""))
    console.print(f"report written to {report.out}/README.md")


__all__ = ["DEFAULT_OUT", "BOOTSTRAP_SAMPLES", "add_parser", "main", "print_report", "report_main", "rebuild_main",
           "rich_table", "stored_results"]

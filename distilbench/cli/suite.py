"""`distilbench suite`: run a benchmark grid (benchmarks/NAME.yaml), resumable, then write reports/NAME/
(:mod:`distilbench.suite` runs it; this module prints the report's tables)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from ..cluster import announce, check_jobs, check_shared_store, default_memory, slurm_options, submit
from ..errors import UsageError
from ..results.backends import display
from .flags import add_config_flags, add_launcher_flags, pop_launcher_flags
from .report import print_report

SUITE_EXAMPLES = """examples:
  distilbench suite benchmarks/ted-table2.yaml --scale cpu
  distilbench suite benchmarks/p002-table1.yaml --scale cpu --workers 2 --data-dir ../shared/data/glue
  distilbench suite benchmarks/autoskd.yaml --scale paper --results runs/autoskd-paper.sqlite --out reports/autoskd-paper
  distilbench suite benchmarks/ted-table2.yaml --scale paper --results postgresql://me@db/grid --launcher slurm --jobs 16
"""


def add_parser(sub, flags: bool = True) -> None:
    """``flags``: build the run options' flags (they load the objectives: only for the command being parsed)."""
    suite = sub.add_parser("suite", allow_abbrev=False,
                           help="run a benchmark grid (benchmarks/NAME.yaml), resumable, then write reports/NAME/",
                           usage="%(prog)s SUITE.yaml [options]", epilog=SUITE_EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    suite.add_argument("suite_file", metavar="SUITE.yaml", help="benchmark suite file, e.g. benchmarks/p002-table1.yaml")
    suite.add_argument("--scale", default="cpu", help="which `scales:` entry of the suite to run (default: cpu)")
    suite.add_argument("--out", default=None, help="report folder (default: reports/NAME, reports/NAME-SCALE for other scales)")
    suite.add_argument("--pretrain-only", action="store_true",
                       help="distil the suite's general students (its pretrain block) and stop before the cells")
    if flags:
        from ..suite import suite_flags

        add_config_flags(suite, suite_flags)
    add_launcher_flags(suite, "suite")


def main(args: dict[str, Any], argv: Sequence[str]) -> int:
    """Run `suite` with the parsed flags (the exact command line goes into the report header), then print the
    report's tables and the cells that diverged. Exit code: 0, or 1 when a cell's training diverged."""
    from rich.console import Console

    from ..suite import load_suite, run_suite

    args = dict(args)
    path, scale, out, only = args.pop("suite_file"), args.pop("scale"), args.pop("out"), args.pop("pretrain_only")
    launch = pop_launcher_flags(args)
    suite = load_suite(path, scale, overrides=args)
    if only and suite.general is None:
        raise UsageError(f"--pretrain-only: suite {path} has no pretrain block (no general students to distil)")
    if only and launch["launcher"] == "slurm":
        raise UsageError("--pretrain-only runs here, on one machine: leave out --launcher slurm")
    jobs = check_jobs(launch["jobs"], launch["launcher"])
    if launch["launcher"] == "slurm":
        return _submit(suite, argv, jobs, launch["slurm"], out)
    result = run_suite(suite, shlex.join(["distilbench", *argv]), out, write_report=launch["report"], pretrain_only=only)
    if result.report is not None:
        print_report(result.report)
    if result.failed:
        Console(stderr=True).print(f"[bold red]{len(result.failed)} cell(s) diverged:[/]\n" + "\n".join(result.failed))
    return result.code


def _submit(suite, argv: Sequence[str], jobs: int, flags: dict, out: str | None) -> int:
    """Every cell validated and the store checked here, before anything is submitted; then the array, and return."""
    from ..suite import default_out, general_plans, validate
    from ..suite.general import missing

    results = suite.configs()[0].results
    check_shared_store(results, "--results")
    options = slurm_options(suite.slurm, flags, f"suite {suite.path}: slurm")
    absent = missing(general_plans(suite))
    validate(suite)  # every cell, as a local suite would, before the array exists
    if absent:  # array tasks would each distil the same student into the same folder
        raise UsageError(f"suite {suite.path}: general student(s) {', '.join(absent)} not distilled yet: run "
                         f"`distilbench suite {suite.path} --scale {suite.scale} --pretrain-only` first (on one machine)")
    options, memory = default_memory(options, default_out(suite))  # sized from this scale's committed report
    done = submit(argv, jobs, options, suite.name, Path("slurm-logs") / suite.name)
    print(memory, file=sys.stderr)
    report = f"distilbench report --results {results} --out {out or default_out(suite)}"
    print(announce(done, display(results), report))
    return 0


__all__ = ["SUITE_EXAMPLES", "add_parser", "main"]

"""The `distilbench` command: one module per command, each with ``add_parser`` (or two) and ``main``. The only place
that builds parsers (``flags`` builds the shared flags, ``summary`` prints `run`'s closing table). Flags are generated from :class:`RunConfig` (``flags``), so help text lives in one place.

Bad input ends with one line ``distilbench: error: ...`` on stderr and exit code 2, before anything is written.

May import everything below it (``suite``, ``search``, ``training``, ``report``, ...), lazily where it is heavy:
building the parser and `distilbench report` import no torch.
"""
from __future__ import annotations

import os
import sys

from ..allocator import tune as tune_allocator
from ..errors import TrainingDiverged, UsageError
from . import export, findings, ls, pretrain, report, run, search, suite
from .flags import Parser, add_config_flags  # noqa: F401 - the flags every command shares
from .run import RUN_EXAMPLES  # noqa: F401
from .suite import SUITE_EXAMPLES  # noqa: F401


def make_parser(command: str | None = None) -> Parser:
    """Every command's parser; with ``command``, the run options' flags (which load the objectives, and torch) are
    built for that command alone, so `distilbench report` imports no torch."""
    # allow_abbrev=False everywhere: `--epoch 3` must be refused, not silently read as `--epochs 3`
    parser = Parser(prog="distilbench", description="Compare knowledge-distillation objectives under one harness.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run.add_run_parser(sub, command in (None, "run"))
    search.add_parser(sub, command in (None, "search"))
    run.add_teacher_parser(sub, command in (None, "teacher"))
    pretrain.add_parser(sub, command in (None, "pretrain"))
    export.add_parser(sub)
    ls.add_parser(sub)
    report.add_parser(sub)
    findings.add_parser(sub)
    suite.add_parser(sub, command in (None, "suite"))
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tune_allocator()  # large per-step tensors stay on the heap instead of being page-faulted in every step
    try:
        given = sys.argv[1:] if argv is None else argv
        named = next((a for a in given if not a.startswith("-")), None)  # the command: argparse finds the same one
        args = vars(make_parser(named).parse_args(argv))
        command = args.pop("command")
        if command == "ls":
            return ls.main(args["what"])
        if command == "export":
            return export.main(args)
        if command == "findings":
            return findings.main(args)
        if command == "report":
            return report.main(args, given)
        if command == "suite":
            return suite.main(args, given)
        if command == "search":
            return search.main(args, given)
        if command == "pretrain":
            return pretrain.main(args, given)
        return run.main(command, args)
    except UsageError as exc:
        print(f"distilbench: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"distilbench: training diverged: {exc}", file=sys.stderr)
        return 1


__all__ = ["main", "make_parser"]

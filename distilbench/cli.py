"""The `distilbench` command. Flags are generated from :class:`RunConfig`, so help text lives in one place.

Bad input ends with one line ``distilbench: error: ...`` on stderr and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from .config import RunConfig, build_config
from .errors import TrainingDiverged, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 (argparse would print the whole usage)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=base, default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper())


def make_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: `--epoch 3` must be refused, not silently read as `--epochs 3`
    parser = _Parser(prog="distilbench", description="Compare knowledge-distillation objectives under one harness.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", allow_abbrev=False, help="distil students (seeds paired), store every result, print the table")
    run.add_argument("--config", default=None, help="YAML file of options (CLI flags override it)")
    _add_config_flags(run)
    teacher = sub.add_parser("teacher", allow_abbrev=False, help="fine-tune and cache a teacher; print its dev score")
    teacher.add_argument("--config", default=None, help="YAML file of options (CLI flags override it)")
    teacher.add_argument("--model", dest="teacher", default=argparse.SUPPRESS, help="teacher alias, hub id or path")
    _add_config_flags(teacher, ("task", "teacher_epochs", "teacher_lr", "teacher_seed", "batch_size", "eval_batch_size",
                                "max_length", "warmup_ratio", "weight_decay", "max_grad_norm", "selection_fraction",
                                "select_best_epoch", "max_train_examples", "max_eval_examples", "data_dir", "results",
                                "cpu", "mixed_precision", "progress"))
    ls = sub.add_parser("ls", allow_abbrev=False, help="list what is registered, one name per line first")
    ls.add_argument("what", choices=["objectives", "tasks", "inits", "models"])
    from .report import _add_report_commands
    _add_report_commands(sub)  # report, suite
    return parser


def _ls(what: str) -> None:
    if what == "objectives":
        from .objectives import OBJECTIVES
        for name in OBJECTIVES:
            cls = OBJECTIVES.get(name)
            print(f"{name}\tv{cls.version}\t{cls.paper}")
    elif what == "tasks":
        from .tasks import TASKS
        for name in TASKS:
            t = TASKS.get(name)
            print(f"{name}\tv{t.version}\t{'regression' if t.regression else f'{t.num_labels} labels'}\tmain score: {t.main_score}")
    elif what == "inits":
        from .inits import INITS
        for name in INITS:
            print(f"{name}\t{(INITS.get(name).__doc__ or '').strip()}")
    else:
        from .models import MODELS, describe
        for name in MODELS:
            try:
                d = describe(name)
                print(f"{name}\t{d.get('architecture')}\t{d.get('layers')} layers\thidden {d.get('hidden')}\t{d.get('path')}")
            except UsageError as exc:
                print(f"{name}\tnot installed: {exc}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = vars(make_parser().parse_args(argv))
        command = args.pop("command")
        if command == "ls":
            _ls(args["what"])
            return 0
        if command in ("report", "suite"):
            from .report import dispatch
            return dispatch(command, args, sys.argv[1:] if argv is None else argv)
        cfg = build_config(args, args.pop("config", None))
        from .runner import Runner, summary_table

        if command == "teacher":
            cfg.baseline = False
            cfg.objective = "none"
            Runner(cfg).teacher()
            return 0
        runner = Runner(cfg)
        rows = runner.run()
        from rich.console import Console
        Console().print(summary_table(rows, runner.plan.task, cfg))
        return 0
    except UsageError as exc:
        print(f"distilbench: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"distilbench: training diverged: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

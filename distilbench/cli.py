"""The `distilbench` command. Flags are generated from :class:`RunConfig`, so help text lives in one place.

Bad input ends with one line ``distilbench: error: ...`` on stderr and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

from .config import GROUPS, RunConfig, build_config
from .errors import TrainingDiverged, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 (argparse would print the whole usage)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One flag per RunConfig field (or per field in ``only``), under its field's `--help` section (config.GROUPS)."""
    hints = typing.get_type_hints(RunConfig)
    fields = [f for f in dataclasses.fields(RunConfig) if only is None or f.name in only]
    sections = {g: parser.add_argument_group(g, about) for g, about in GROUPS.items()
                if any(f.metadata["group"] == g for f in fields)}
    for f in fields:
        section = sections[f.metadata["group"]]
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if f.name == "task":  # the task registry is YAML, cheap to read here (objectives import torch: `ls` lists them)
            from .tasks import TASKS
            help_text = f"{f.metadata['help']} Accepted: {', '.join(TASKS)}. (default: {f.default})"
        if base is bool:
            section.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif "choices" in f.metadata:  # argparse refuses anything else in one line and shows {a,b} in the help
            section.add_argument(flag, type=base, default=argparse.SUPPRESS, help=help_text, choices=f.metadata["choices"])
        else:
            section.add_argument(flag, type=base, default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper())


RUN_EXAMPLES = """examples:
  distilbench run --objective kd --task rte --seeds 4 --data-dir ../shared/data/glue
  distilbench run --objective att-kl+hid-seq --task mrpc --init layers:1,3,6 --student-layers 3 --seeds 3
  distilbench run --objective ted --task rte --seeds 4 --ted-filter mlp --teacher-cache fp16
"""
SUITE_EXAMPLES = """examples:
  distilbench suite benchmarks/ted-table2.yaml --scale cpu
  distilbench suite benchmarks/p002-table1.yaml --scale cpu --workers 2 --data-dir ../shared/data/glue
  distilbench suite benchmarks/autoskd.yaml --scale paper --results runs/autoskd-paper.sqlite --out reports/autoskd-paper
"""


def make_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: `--epoch 3` must be refused, not silently read as `--epochs 3`
    parser = _Parser(prog="distilbench", description="Compare knowledge-distillation objectives under one harness.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", allow_abbrev=False, help="distil students (seeds paired), store every result, print the table",
                         usage="%(prog)s [options]", epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--config", default=None, help="YAML file of options (CLI flags override it)")
    run.add_argument("--params", default=None, metavar="best:STUDY",
                     help="take the hyper-parameters of a search's best trial (precedence: CLI > study > YAML > defaults)")
    run.add_argument("--storage", default=None, help="the search database of --params (default: search.sqlite beside --results)")
    _add_config_flags(run)
    search = sub.add_parser("search", allow_abbrev=False,
                            help="tune an objective with Optuna on the selection split (never dev); resumable, multi-worker")
    search.add_argument("--config", default=None, help="YAML file of options (CLI flags override it)")
    search.add_argument("--trials", type=int, default=20, help="finished trials the study should have (per objective; default 20)")
    search.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite search.sqlite beside --results); "
                        "a PostgreSQL URL lets workers on several machines share one study")
    search.add_argument("--study", default=None, help="study name (default: OBJECTIVE-TASK-TEACHER-INIT); an existing study continues")
    search.add_argument("--pruner", default="median", help="median | wilcoxon | none (each seed's score is reported as one step)")
    search.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    search.add_argument("--heartbeat", type=int, default=60, help="seconds between trial heartbeats; a silent trial fails after twice that and is retried")
    search.add_argument("--out", default=None, help="report folder (default reports/search-STUDY)")
    _add_config_flags(search)
    teacher = sub.add_parser("teacher", allow_abbrev=False, help="fine-tune and cache a teacher; print its dev score")
    teacher.add_argument("--config", default=None, help="YAML file of options (CLI flags override it)")
    teacher.add_argument("--model", dest="teacher", default=argparse.SUPPRESS, help="teacher alias, hub id or path")
    _add_config_flags(teacher, ("task", "teacher_epochs", "teacher_lr", "teacher_seed", "teacher_micro_batch", "batch_size", "eval_batch_size",
                                "max_length", "warmup_ratio", "weight_decay", "max_grad_norm", "selection_fraction",
                                "select_best_epoch", "max_train_examples", "max_eval_examples", "data_dir", "results",
                                "cpu", "mixed_precision", "progress"))
    export = sub.add_parser("export", allow_abbrev=False,
                            help="the saved student of one stored run (--save-students), its model card rewritten; trains nothing")
    export.add_argument("--results", default="runs/results.sqlite", help="SQLite results store (default: runs/results.sqlite)")
    export.add_argument("--run-key", required=True, help="the run's key (the run_key column of the store)")
    export.add_argument("--out", default=None, help="copy the student folder here (a new or empty folder); default: leave it "
                        "where the run saved it")
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
        if command == "export":
            from .export import export

            print(export(args["results"], args["run_key"], args["out"]))
            return 0
        if command in ("report", "suite"):
            from .report import dispatch
            return dispatch(command, args, sys.argv[1:] if argv is None else argv)
        yaml_path = args.pop("config", None)
        if command == "search":
            from .config import load_yaml
            from .search import run_search

            opts = {k: args.pop(k) for k in ("trials", "storage", "study", "pruner", "sampler_seed", "heartbeat", "out")}
            fixed = set(args) | (set(load_yaml(yaml_path)) if yaml_path else set())  # what the user set is not searched
            cfg = build_config(args, yaml_path)
            if cfg.save_students:  # trials are scored on the selection split and never kept
                raise UsageError("--save-students is for `distilbench run` and `suite`; a search keeps no student: run the best "
                                 "trial with `distilbench run --params best:STUDY --save-students DIR`")
            return run_search(cfg, fixed, opts["trials"], opts["storage"], opts["study"], opts["pruner"],
                              opts["sampler_seed"], opts["out"], opts["heartbeat"],
                              "distilbench " + " ".join(sys.argv[1:] if argv is None else argv))
        params, storage = args.pop("params", None), args.pop("storage", None)
        if params is not None:
            if not params.startswith("best:") or not params[5:]:
                raise UsageError(f"--params must be best:STUDY, the name of a search study (got {params!r})")
            from .search import best_params

            args = {**best_params(params[5:], storage, args.get("results", RunConfig.results)), **args}
        cfg = build_config(args, yaml_path)
        from .runner import Runner, summary_table, time_breakdown

        if command == "teacher":
            cfg.baseline = False
            cfg.objective = "none"
            Runner(cfg).teacher()
            return 0
        runner = Runner(cfg)
        rows = runner.run()
        from rich.console import Console
        console = Console()
        for part in [*summary_table(rows, runner.plan.task, cfg, runner.precision), *time_breakdown(runner)]:
            console.print(part, soft_wrap=isinstance(part, str))  # a line longer than the terminal is not cut by rich
        if runner.lost:
            print(f"distilbench: {len(runner.lost)} run(s) lost with a worker that died ({', '.join(runner.lost)}); "
                  "rerun the same command to train them", file=sys.stderr)
            return 1
        return 0
    except UsageError as exc:
        print(f"distilbench: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"distilbench: training diverged: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

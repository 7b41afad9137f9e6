"""`distilbench run` (distil students, store every result, print the table) and `distilbench teacher` (fine-tune and
cache a teacher)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import RunConfig
from ..errors import UsageError
from .flags import Formatter, add_config_flags, config_from

RUN_EXAMPLES = """examples:
  distilbench run --objective kd --task rte --seeds 4 --data-dir ../shared/data/glue
  distilbench run --objective att-kl+hid-seq --task mrpc --init layers:1,3,6 --student-layers 3 --seeds 3
  distilbench run --objective ted --task rte --seeds 4 --ted-filter mlp --teacher-cache fp16
"""

TEACHER_FLAGS = ("task", "teacher_epochs", "teacher_lr", "teacher_seed", "teacher_micro_batch", "batch_size", "eval_batch_size",
                 "max_length", "warmup_ratio", "weight_decay", "max_grad_norm", "selection_fraction",
                 "select_best_epoch", "max_train_examples", "teacher_max_train_examples", "max_eval_examples", "data_dir", "results",
                 "cpu", "mixed_precision", "progress", "bpe_vocab", "eval_stride")


def add_run_parser(sub, flags: bool = True) -> None:
    run = sub.add_parser("run", allow_abbrev=False, help="distil students (seeds paired), store every result, print the table",
                         usage="%(prog)s [options]", epilog=RUN_EXAMPLES, formatter_class=Formatter)
    run.add_argument("--config", default=None, help="YAML file of options (CLI flags override it)")
    run.add_argument("--params", default=None, metavar="best:STUDY",
                     help="take the hyper-parameters of a search's best trial (precedence: CLI > study > YAML > defaults)")
    run.add_argument("--storage", default=None, help="the search database of --params (default: search.sqlite beside --results)")
    if flags:  # they load the objectives: only for the command being parsed
        add_config_flags(run)


def add_teacher_parser(sub, flags: bool = True) -> None:
    teacher = sub.add_parser("teacher", allow_abbrev=False, help="fine-tune and cache a teacher; print its dev score",
                             formatter_class=Formatter)
    teacher.add_argument("--config", default=None, help="YAML file of options (CLI flags override it)")
    teacher.add_argument("--model", dest="teacher", default=argparse.SUPPRESS, help="teacher alias, hub id or path")
    teacher.add_argument("--init", dest="teacher_init", choices=("pretrained", "random"), default="pretrained",
                         help="random: a causal LM trained from scratch (a causal-LM task only), of shape --teacher-config; "
                              "the same teacher as `run --teacher scratch:CONFIG` (default: pretrained)")
    teacher.add_argument("--teacher-config", default="gpt2-tiny", metavar="CONFIG",
                         help="--init random: gpt2-tiny | gpt2-mini | gpt2-small, or key=value pairs (n_layer=4,n_embd=128,"
                              "n_head=4), or a size then overrides (default: gpt2-tiny)")
    if flags:
        add_config_flags(teacher, TEACHER_FLAGS)


def main(command: str, args: dict[str, Any]) -> int:
    """`run` or `teacher`, with the parsed flags (``command`` already taken out)."""
    yaml_path = args.pop("config", None)
    teacher_init, teacher_config = args.pop("teacher_init", "pretrained"), args.pop("teacher_config", None)
    if teacher_init == "random":  # a from-scratch teacher is named by its shape: `run --teacher scratch:CONFIG`
        if "teacher" in args:
            raise UsageError(f"--init random trains a teacher from scratch; it conflicts with --model {args['teacher']}")
        args["teacher"] = f"scratch:{teacher_config}"
    params, storage = args.pop("params", None), args.pop("storage", None)
    if params is not None:
        if not params.startswith("best:") or not params[5:]:
            raise UsageError(f"--params must be best:STUDY, the name of a search study (got {params!r})")
        from ..search import best_params

        args = {**best_params(params[5:], storage, args.get("results", RunConfig.results)), **args}
    # `teacher` trains no student: only the teacher's own options come from the task's defaults
    cfg, _ = config_from(args, yaml_path, None if command == "run" else (*TEACHER_FLAGS, "teacher"))
    from ..training.families import make_runner
    from .summary import print_parts, summary_table, time_breakdown

    if command == "teacher":
        cfg.baseline = False
        cfg.objective = "none"
        cfg.init = "random"  # no student is built: its layer count is not checked against the teacher's
        record = make_runner(cfg).teacher()
        if cfg.teacher.startswith("scratch:"):  # where it is kept, and how a run names it
            print(f"teacher {cfg.teacher} (from scratch): {record.path}; distil from it with --teacher {cfg.teacher}")
        return 0
    runner = make_runner(cfg)
    rows = runner.run()
    if not runner.accelerator.is_main_process:  # data-parallel processes (torchrun): the main one reports
        return 0
    print_parts([*summary_table(rows, runner.plan.task, cfg, runner.precision), *time_breakdown(runner)])
    if runner.lost:
        print(f"distilbench: {len(runner.lost)} run(s) lost with a worker that died ({', '.join(runner.lost)}); "
              "rerun the same command to train them", file=sys.stderr)
        return 1
    return 0


__all__ = ["RUN_EXAMPLES", "add_run_parser", "add_teacher_parser", "main"]

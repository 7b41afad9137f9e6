"""The parser class every `distilbench` command uses, and the flags generated from :class:`RunConfig`'s fields and
the registered objectives' options (:func:`distilbench.config.all_options`)."""
from __future__ import annotations

import argparse
import sys
import textwrap
import typing

from ..cluster import LAUNCHERS
from ..config import GROUPS, RunConfig, all_options, merge_options
from ..errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 (argparse would print the whole usage)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text wrapped at spaces only: a name like ``qnli-devsplit`` in a list of accepted values stays whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def add_config_flags(parser: argparse.ArgumentParser,
                     only: tuple[str, ...] | typing.Callable[[typing.Iterable[str]], tuple[str, ...]] | None = None) -> None:
    """One flag per option (or per option in ``only``: a tuple, or a function of the option names), under its
    `--help` section (config.GROUPS): RunConfig's fields and every registered objective's options. Loads the objectives
    (torch), so a command builds these flags only when it is the one parsed (:func:`distilbench.cli.make_parser`)."""
    from ..objectives import load_all

    load_all()  # declares every objective's options, third-party ones too
    wanted = only(option.name for option in all_options()) if callable(only) else only
    options = [o for o in all_options() if wanted is None or o.name in wanted]
    sections = {g: parser.add_argument_group(g, about) for g, about in GROUPS.items() if any(o.group == g for o in options)}
    for option in options:
        section = sections[option.group]
        flag = "--" + option.name.replace("_", "-")
        help_text = f"{option.help} (default: {option.default})"
        if option.name == "task":  # the task registry is YAML, cheap to read here
            from ..data.tasks import TASKS
            help_text = f"{option.help} Accepted: {', '.join(TASKS)}. (default: {option.default})"
        if option.base is bool:
            section.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif option.choices:  # argparse refuses anything else in one line and shows {a,b} in the help
            section.add_argument(flag, type=option.base, default=argparse.SUPPRESS, help=help_text, choices=option.choices)
        else:
            section.add_argument(flag, type=option.base, default=argparse.SUPPRESS, help=help_text, metavar=option.name.upper())


def config_from(args: dict, yaml_path: str | None, only: tuple[str, ...] | None = None) -> tuple[RunConfig, set[str]]:
    """The command's RunConfig (CLI > --config YAML > the task's own defaults > dataclass), printing in one line the
    values taken from the task's registry file, since nobody typed them; ``only``: the task defaults this command
    uses (``teacher`` trains no student). Also returns the option names the user set (flags and YAML)."""
    from ..data.offline import offline_substitute
    from ..data.tasks import get_task, task_run_defaults

    def defaults_of(task: str) -> dict:
        return {k: v for k, v in task_run_defaults(task).items() if only is None or k in only}

    values, taken = merge_options(args, yaml_path, defaults_of)
    swap = offline_substitute(values["task"], values.get("data_dir")) if values.get("task") else None
    if swap:  # e.g. --task squad offline, where only SQuAD's dev file exists: its split, said in one line
        print(swap[1], file=sys.stderr)
        values, taken = merge_options({**args, "task": swap[0]}, yaml_path, defaults_of)
    cfg = RunConfig(**values).validate()
    if taken:
        name = get_task(cfg.task).name
        print(f"task {name}'s own defaults (registry/tasks/{name}.yaml; a flag overrides each): "
              + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in taken.items()))
    return cfg, set(values) - set(taken)


__all__ = ["Parser", "add_config_flags", "config_from"]


# --launcher and its Slurm options (distilbench.cluster): where a suite's or a search's workers run, never what they measure
LAUNCHER_FLAGS = ("launcher", "jobs", "report", "slurm_partition", "slurm_time", "slurm_cpus", "slurm_mem_gb", "slurm_gpus",
                  "slurm_account", "slurm_extra", "slurm_setup", "slurm_logs", "slurm_requeue")


def add_launcher_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--launcher local|slurm``, ``--jobs N`` and the ``--slurm-*`` options, in their own `--help` section."""
    g = parser.add_argument_group("cluster", f"--launcher slurm submits --jobs array tasks, each a {what} worker "
                                  "against the shared PostgreSQL store, and returns (distilbench.cluster)")
    g.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local (default): run here; slurm: submit a Slurm job array through submitit")
    g.add_argument("--jobs", type=int, default=None, help="array tasks to submit with --launcher slurm (workers)")
    g.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the report when done (default); array tasks do not: the store is their output")
    g.add_argument("--slurm-partition", default=None, help="partition of each task")
    g.add_argument("--slurm-time", type=int, default=None, help="time limit of each task, minutes (default 240)")
    g.add_argument("--slurm-cpus", type=int, default=None, help="CPUs per task (default 2)")
    g.add_argument("--slurm-mem-gb", type=float, default=None, help="memory per task, GB (default: the partition's)")
    g.add_argument("--slurm-gpus", type=int, default=None, help="GPUs per task (default 0)")
    g.add_argument("--slurm-account", default=None, help="account to charge")
    g.add_argument("--slurm-extra", action="append", default=None, metavar="--NAME=VALUE",
                   help="another sbatch option, e.g. --slurm-extra=--qos=high (repeatable)")
    g.add_argument("--slurm-setup", action="append", default=None, metavar="LINE",
                   help="a shell line run before each task, e.g. 'module load cuda' (repeatable)")
    g.add_argument("--slurm-logs", default=None, help="folder of the tasks' scripts and logs (default slurm-logs/NAME)")
    g.add_argument("--slurm-requeue", action=argparse.BooleanOptionalAction, default=None,
                   help="requeue a preempted or timed-out task (it resumes from the store)")


def pop_launcher_flags(args: dict) -> dict:
    """Remove the launcher flags from parsed ``args``; returns them, the ``--slurm-*`` ones under ``slurm`` (the
    ones given, without the prefix)."""
    out = {k: args.pop(k) for k in LAUNCHER_FLAGS}
    out["slurm"] = {k.removeprefix("slurm_"): out.pop(k) for k in list(out) if k.startswith("slurm_")}
    return out

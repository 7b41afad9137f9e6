"""The parser class every `distilbench` command uses, and the flags generated from :class:`RunConfig`."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from ..config import GROUPS, RunConfig
from ..errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 (argparse would print the whole usage)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text wrapped at spaces only: a name like ``qnli-devsplit`` in a list of accepted values stays whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
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
            from ..data.tasks import TASKS
            help_text = f"{f.metadata['help']} Accepted: {', '.join(TASKS)}. (default: {f.default})"
        if base is bool:
            section.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif "choices" in f.metadata:  # argparse refuses anything else in one line and shows {a,b} in the help
            section.add_argument(flag, type=base, default=argparse.SUPPRESS, help=help_text, choices=f.metadata["choices"])
        else:
            section.add_argument(flag, type=base, default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper())


def config_from(args: dict, yaml_path: str | None, only: tuple[str, ...] | None = None) -> tuple[RunConfig, set[str]]:
    """The command's RunConfig (CLI > --config YAML > the task's own defaults > dataclass), printing in one line the
    values taken from the task's registry file, since nobody typed them; ``only``: the task defaults this command
    uses (``teacher`` trains no student). Also returns the option names the user set (flags and YAML)."""
    from ..config import merge_options
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

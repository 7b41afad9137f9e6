"""`run --help` and `suite --help`: every RunConfig flag once, under its field's section, fixed sets as argparse
choices, and examples that parse and validate (so they cannot go stale)."""
from __future__ import annotations

import re
import shlex

import pytest

from distilbench.cli import RUN_EXAMPLES, SUITE_EXAMPLES, main, make_parser
from distilbench.config import GROUPS, all_options, build_config, option
from distilbench.objectives import load_all
from distilbench.suite import CELL_FIELDS, suite_flags

load_all()  # every objective's options are declared: the flags below are generated from them

ENTRY = re.compile(r"^  (--[a-z][a-z0-9-]*)")  # an option's own help entry (indented two spaces)
HEADING = re.compile(r"^(\S.*):$")


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        make_parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def sections(text: str) -> dict[str, list[str]]:
    """Section heading -> the flags whose help entries stand under it, in order; "" holds the lines before any."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            current = heading.group(1)
            assert current not in out, f"section {current!r} appears twice"
            out[current] = []
            continue
        entry = ENTRY.match(line)
        if entry:
            out.setdefault(current, []).append(entry.group(1))
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def group_of(name: str) -> str:
    return option(name).group


@pytest.mark.parametrize("command, names", [
    ("run", tuple(o.name for o in all_options())),
    ("suite", suite_flags()),
])
def test_every_config_flag_once_under_its_section(command, names, capsys):
    found = sections(help_text(command, capsys))
    listed = [f for flags in found.values() for f in flags]
    for name in names:
        assert listed.count(flag(name)) == 1, f"{flag(name)} listed {listed.count(flag(name))} times in `{command} --help`"
        assert flag(name) in found[group_of(name)], f"{flag(name)} is not under {group_of(name)!r}"
    for group in GROUPS:
        assert group in found, f"`{command} --help` has no {group!r} section"
    # the config sections hold config flags only, and nothing else is missing from them
    for group in GROUPS:
        assert sorted(found[group]) == sorted(flag(n) for n in names if group_of(n) == group)


def test_suite_help_leaves_out_what_each_cell_sets(capsys):
    listed = [f for flags in sections(help_text("suite", capsys)).values() for f in flags]
    for name in CELL_FIELDS:
        assert flag(name) not in listed


def test_section_order_and_examples(capsys):
    text = help_text("run", capsys)
    positions = [text.index(f"\n{group}:\n") for group in GROUPS]
    assert positions == sorted(positions)
    assert text.rstrip().endswith(RUN_EXAMPLES.rstrip())
    assert len([line for line in text.splitlines() if line.startswith("  distilbench run ")]) == 3


def test_fixed_sets_are_choices(capsys):
    text = help_text("run", capsys)
    for name in ("schedule", "ted_filter", "ted_student_filters", "ted_teacher_filters", "theta_update", "teacher_cache",
                 "autoskd_lookahead", "mixed_precision"):
        accepted = option(name).choices
        assert f"{flag(name)} {{{','.join(accepted)}}}" in text


@pytest.mark.parametrize("examples, command", [(RUN_EXAMPLES, "run"), (SUITE_EXAMPLES, "suite")])
def test_examples_parse(examples, command):
    lines = [line.strip() for line in examples.splitlines() if line.strip().startswith("distilbench ")]
    assert len(lines) == {"run": 3, "suite": 4}[command]  # suite's fourth: a Slurm array
    for line in lines:
        argv = shlex.split(line)[1:]
        assert argv[0] == command
        args = vars(make_parser().parse_args(argv))
        if command == "run":  # the options themselves are valid too (no data or model is opened by this)
            args.pop("command"), args.pop("config"), args.pop("params"), args.pop("storage")
            build_config(args)


def test_a_value_outside_the_choices_is_one_line(capfd):
    assert main(["run", "--schedule", "bogus"]) == 2
    err = capfd.readouterr().err.splitlines()
    assert err == ["distilbench: error: argument --schedule: invalid choice: 'bogus' (choose from 'joint', 'sequential') "
                   "(see `distilbench run --help`)"]


def test_a_yaml_value_outside_the_choices_is_refused(tmp_path):
    from distilbench.errors import UsageError

    config = tmp_path / "c.yaml"
    config.write_text("mixed_precision: fp8\n")
    with pytest.raises(UsageError, match=r"^--mixed-precision must be one of auto, no, fp32, bf16, fp16 \(got 'fp8'\)$"):
        build_config({}, str(config))


def test_the_task_help_lists_the_registered_tasks(capsys):
    from distilbench.data.tasks import TASKS

    text = " ".join(help_text("run", capsys).split())
    assert f"Accepted: {', '.join(TASKS)}." in text

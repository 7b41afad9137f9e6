"""`distilbench search`: tune an objective with Optuna on the selection split (never dev)."""
from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any, Sequence

from ..cluster import announce, check_jobs, check_shared_store, local_argv, slurm_options, submit
from ..config import option as config_option
from ..errors import UsageError
from ..results.backends import display
from .flags import add_config_flags, add_launcher_flags, config_from, pop_launcher_flags

OPTIONS = ("trials", "storage", "study", "pruner", "sampler_seed", "heartbeat", "out", "grid")


def add_parser(sub, flags: bool = True) -> None:
    search = sub.add_parser("search", allow_abbrev=False,
                            help="tune an objective with Optuna on the selection split (never dev); resumable, multi-worker")
    search.add_argument("--config", default=None, help="YAML file of options (CLI flags override it)")
    search.add_argument("--trials", type=int, default=None, help="finished trials the study should have (per objective; "
                        "default 20, or every combination of --grid)")
    search.add_argument("--grid", action="append", default=None, metavar="NAME=V1,V2",
                        help="search exactly these values, every combination once (repeatable: --grid lr=1e-4,5e-5 "
                             "--grid batch_size=16,32); the rest stays fixed. Default: TPE over the objective's space")
    search.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite search.sqlite beside --results); "
                        "a PostgreSQL URL lets workers on several machines share one study")
    search.add_argument("--study", default=None, help="study name (default: OBJECTIVE-TASK-TEACHER-INIT); an existing study continues")
    search.add_argument("--pruner", default=None, help="median | wilcoxon | none (each seed's score is reported as one step; "
                        "default median, none with --grid: a pruned grid point would have no score)")
    search.add_argument("--sampler-seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    search.add_argument("--heartbeat", type=int, default=60, help="seconds between trial heartbeats; a silent trial fails after twice that and is retried")
    search.add_argument("--out", default=None, help="report folder (default reports/search-STUDY)")
    if flags:  # they load the objectives: only for the command being parsed
        add_config_flags(search)
    add_launcher_flags(search, "search")


def main(args: dict[str, Any], argv: Sequence[str]) -> int:
    from ..objectives import get_objective
    from ..search import check_grid, run_search

    yaml_path = args.pop("config", None)
    opts = {k: args.pop(k) for k in OPTIONS}
    launch = pop_launcher_flags(args)
    # a task's own defaults apply to its trials too (wikitext2: the scratch teacher); what the user set is not searched
    cfg, fixed = config_from(args, yaml_path)
    grid = opts["grid"] = parse_grid(opts["grid"] or [])
    if grid:  # checked here, before a Slurm array is submitted too
        check_grid(grid, get_objective(cfg.objective), fixed, cfg)
        size = math.prod(len(v) for v in grid.values())
        if opts["trials"] not in (None, size):
            raise UsageError(f"--trials {opts['trials']} with a grid of {size} combinations: a grid runs each once "
                             f"(leave --trials out)")
        opts["trials"] = size
    opts["trials"] = 20 if opts["trials"] is None else opts["trials"]
    opts["pruner"] = opts["pruner"] or ("none" if grid else "median")
    if cfg.save_students:  # trials are scored on the selection split and never kept
        raise UsageError("--save-students is for `distilbench run` and `suite`; a search keeps no student: run the best "
                         "trial with `distilbench run --params best:STUDY --save-students DIR`")
    jobs = check_jobs(launch["jobs"], launch["launcher"])
    if launch["launcher"] == "slurm":
        return _submit(cfg, opts, argv, jobs, launch["slurm"])
    return run_search(cfg, fixed, opts["trials"], opts["storage"], opts["study"], opts["pruner"],
                      opts["sampler_seed"], opts["out"], opts["heartbeat"], "distilbench " + " ".join(argv),
                      write_report_too=launch["report"], grid=opts["grid"])


def parse_grid(items: list[str]) -> dict[str, list]:
    """``NAME=V1,V2`` flags as {name: typed, checked values}; a bad one is one line naming it."""
    grid: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().removeprefix("--").replace("-", "_")
        if not sep or not name or not values.strip():
            raise UsageError(f"--grid {item!r}: write NAME=V1,V2 (e.g. lr=1e-4,5e-5)")
        if name in grid:
            raise UsageError(f"--grid {name} given twice")
        try:
            option = config_option(name)
        except KeyError:
            raise UsageError(f"--grid {name}: no such option (see `distilbench search --help`)") from None
        try:
            typed = [option.base(v.strip()) for v in values.split(",") if v.strip()]
        except (ValueError, TypeError):
            raise UsageError(f"--grid {item!r}: {name} takes {option.base.__name__} values") from None
        if option.base not in (int, float) or any(not math.isfinite(v) for v in typed):
            raise UsageError(f"--grid {name}: a grid takes finite numbers (got {values!r})")
        for value in typed:
            option.check(value)
        if len(set(typed)) != len(typed):
            raise UsageError(f"--grid {name}: a value is listed twice")
        grid[name] = typed
    return grid


def _submit(cfg, opts: dict, argv: Sequence[str], jobs: int, flags: dict) -> int:
    """The stores checked here (both shared: the results and the Optuna study), then the array; returns at once."""
    from ..search import default_study_name, storage_url

    if opts["trials"] < 1:
        raise UsageError(f"--trials must be >= 1 (got {opts['trials']})")
    check_shared_store(cfg.results, "--results")
    url = storage_url(opts["storage"], cfg.results)
    check_shared_store(url, "--storage")
    name = opts["study"] or default_study_name(cfg, opts["grid"])
    done = submit(argv, jobs, slurm_options(None, flags), name, Path("slurm-logs") / f"search-{name}")
    local = shlex.join(["distilbench", *local_argv(argv)])
    print(announce(done, display(url), f"{local}   (once the trials are done: writes the study's report)"))
    return 0


__all__ = ["add_parser", "main"]

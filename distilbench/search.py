"""`distilbench search`: tune one objective with Optuna, fairly — the same budget for every objective, scored on the
selection split (held out of train), never on dev.

- Each objective declares its search space beside its code (``Objective.search_space``, merged along the class
  hierarchy: the harness's lr/epochs/batch size, then e.g. KD's temperature and weight, TED's α2 over 10…1000). Flags
  given on the command line are fixed, not searched.
- A trial trains the objective on every seed of ``--seeds``; its value is the mean selection-split score. Each seed's
  score is reported as step k, so a pruner compares seed k of this trial with seed k of the others (``median``:
  MedianPruner; ``wilcoxon``: WilcoxonPruner, a paired test over the seeds seen so far) and stops a poor trial early.
- The sampler is TPE, seeded (``--sampler-seed``); with ``--grid NAME=V1,V2 ...`` it is a grid over exactly those values
  (Optuna's GridSampler, every combination once; paper 002 fine-tunes over such a grid of learning rates and batch
  sizes), everything else fixed at its flag or default. ``--trials N`` is the study's total of finished trials (complete or
  pruned), so a rerun with the same ``--study`` continues where it stopped, and several workers — processes or
  machines sharing one ``--storage`` database URL (PostgreSQL) — together finish N.
- Storage: an embedded SQLite file beside an SQLite ``--results`` by default (a database ``--results`` holds the study
  too), any SQLAlchemy URL otherwise; heartbeats mark a killed worker's trial
  failed after the grace period, and the retry callback enqueues its parameters again.
- The report (``reports/search-STUDY/`` by default): best parameters and the command that reproduces them
  (``distilbench run ... --params best:STUDY``), the trials table (Markdown and CSV), the optimisation history and the
  parameter importances (PNG).
"""
from __future__ import annotations

import csv
import json
import math
import os
import socket
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import RunConfig
from .data.tasks import get_task
from .errors import UsageError
from .objectives import get_objective
from .report.plotting import pyplot as _plt
from .report.plotting import save as _save
from .results.backends import display, is_url
from .training.families import make_runner
from .training.runs.workers import exit_with_parent, resolve, start_processes
from .training.teachers.teacher import load_teacher

PRUNERS = ("median", "wilcoxon", "none")


def suggest(trial, space: dict[str, tuple], fixed: set[str]) -> dict[str, Any]:
    """Draw a value for every parameter of ``space`` (``("float", low, high[, "log"])``, ``("int", low, high)``,
    ``("categorical", choices)``) except those in ``fixed``."""
    values: dict[str, Any] = {}
    for name, spec in space.items():
        if name in fixed:
            continue
        kind = spec[0]
        if kind == "float":
            values[name] = trial.suggest_float(name, spec[1], spec[2], log="log" in spec[3:])
        elif kind == "int":
            values[name] = trial.suggest_int(name, spec[1], spec[2], log="log" in spec[3:])
        elif kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(spec[1]))
        else:
            raise ValueError(f"search space of {name}: unknown kind {kind!r} (float, int, categorical)")
    return values


def storage_url(storage: str | None, results: str) -> str:
    """``--storage``, else search.sqlite beside an SQLite ``--results``, else the results database itself (Optuna's
    tables do not clash with the store's)."""
    if storage:
        return storage
    if is_url(results):
        return f"sqlite:///{Path(results[len('sqlite:///'):]).expanduser().with_name('search.sqlite').resolve()}" \
            if results.startswith("sqlite:///") else results
    path = Path(results).expanduser().with_name("search.sqlite")
    return f"sqlite:///{path.resolve()}"


def open_storage(url: str, heartbeat: int = 60, max_retry: int = 3):
    """An Optuna RDB storage with heartbeats (a killed worker's trial becomes FAIL after ``2 * heartbeat`` s) and a
    retry callback (its parameters are enqueued again, at most ``max_retry`` times)."""
    import optuna
    from optuna.storages import RDBStorage

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
    stale = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # optuna >= 4.9; before: RetryFailedTrialCallback
    retry = {"heartbeat_stale_trial_callback": stale(max_retry=max_retry)} if stale else \
        {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}
    else:
        engine = {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat, **retry)
    except (ImportError, ModuleNotFoundError) as exc:
        raise UsageError(f"--storage {url}: its database driver is not installed ({exc}); for PostgreSQL: pip install psycopg2-binary") from None
    except Exception as exc:  # sqlalchemy's OperationalError and friends: one line, not a traceback
        if isinstance(exc, optuna.exceptions.OptunaError) or "sqlalchemy" in type(exc).__module__:
            raise UsageError(f"--storage {url}: cannot open the database ({str(exc).splitlines()[0][:160]})") from None
        raise


def default_study_name(cfg: RunConfig, grid: dict[str, list] | None = None) -> str:
    """OBJECTIVE-TASK-TEACHER-INIT, and ``-grid-NAMES`` for a grid (a TPE study of the same run is another study)."""
    teacher = Path(cfg.teacher).name or cfg.teacher
    name = f"{cfg.objective}-{cfg.task}-{teacher}-{cfg.init}" + (f"-grid-{'-'.join(sorted(grid))}" if grid else "")
    return name.replace("/", "_").replace(":", "_")


def make_pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    return optuna.pruners.NopPruner()


def best_params(study_name: str, storage: str | None, results: str) -> dict[str, Any]:
    """``--params best:STUDY``: the best finished trial's parameters (RunConfig field names)."""
    import optuna

    url = storage_url(storage, results)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise UsageError(f"--params best:{study_name}: no study {study_name!r} in {url}") from None
    try:
        return dict(study.best_trial.params)
    except ValueError:
        raise UsageError(f"--params best:{study_name}: the study has no finished trial yet") from None


def _open_study(url: str, name: str, heartbeat: int, sampler_seed: int, pruner: str, cfg: RunConfig | None = None,
                grid: dict[str, list] | None = None):
    """The study, created or continued; one that was sampled otherwise (TPE vs another grid) is refused in one line:
    its trials' parameters would not fit this sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the selection score's direction: a perplexity (causal LM) is minimised
    direction = "minimize" if cfg is not None and not get_task(cfg.task).higher_is_better else "maximize"
    study = optuna.create_study(study_name=name, storage=open_storage(url, heartbeat), direction=direction,
                                sampler=optuna.samplers.GridSampler(grid, seed=sampler_seed) if grid
                                else optuna.samplers.TPESampler(seed=sampler_seed), pruner=make_pruner(pruner),
                                load_if_exists=True)
    sampled = _canonical(grid)
    before = study.user_attrs.get("grid")
    if before is None and study.trials:  # made before the sampler was recorded: a grid trial names its grid
        before = _canonical(study.trials[0].system_attrs.get("search_space"))
    if study.trials and before != sampled:
        what = lambda g: "TPE" if g == "null" else f"the grid {g}"  # noqa: E731
        raise UsageError(f"study {name} was searched by {what(before)}, this search is {what(sampled)}: give another --study")
    study.set_user_attr("grid", sampled)
    return study


def _canonical(grid: dict[str, list] | None) -> str:
    """A grid as the study records it: names and values sorted (the order they were given in does not matter);
    "null" for TPE over the objective's space."""
    return json.dumps({k: sorted(v) for k, v in grid.items()} if grid else None, sort_keys=True)


def search_space(objective_cls, grid: dict[str, list] | None) -> dict[str, tuple]:
    """What the trials draw: the objective's space (:meth:`Objective.space`), or exactly the grid's values."""
    return {k: ("categorical", tuple(v)) for k, v in grid.items()} if grid else objective_cls.space()


def check_grid(grid: dict[str, list], objective_cls, fixed: set[str], cfg: RunConfig) -> None:
    """A grid names hyper-parameters of the objective's space (or AdamW's warm-up and decay), each not also fixed,
    with values a run accepts."""
    allowed = set(objective_cls.space()) | {"warmup_ratio", "weight_decay"}
    for name, values in grid.items():
        if name not in allowed:
            raise UsageError(f"--grid {name}: not a hyper-parameter of {objective_cls.name}; accepted: {', '.join(sorted(allowed))}")
        if name in fixed:
            raise UsageError(f"--grid {name} and --{name.replace('_', '-')} both given: a value is searched or fixed, not both")
        for value in values:
            replace(cfg, **{name: value}).validate()


def _optimize(study, runner, fixed: set[str], trials: int, grid: dict[str, list] | None = None) -> None:
    """Run trials until the study has ``trials`` finished (complete or pruned) ones, in this process. Each trial trains
    the objective on every seed of the runner's plan with the trial's hyper-parameters and reports seed by seed."""
    import optuna

    objective_cls = get_objective(runner.cfg.objective)
    space = search_space(objective_cls, grid)
    base_cfg = runner.cfg
    record = runner.teacher()  # fine-tuned once (cached) before any trial, so trials time only the student
    runner.prepare_team()  # a multi-teacher objective's team, likewise (nothing for single-teacher objectives)
    teacher_net = load_teacher(record, runner.plan.task)
    seeds = runner.plan.seeds
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def trial_fn(trial: optuna.Trial) -> float:
        params = suggest(trial, space, fixed)
        trial.set_user_attr("worker", worker)
        runner.cfg = replace(base_cfg, **params).validate()  # the same plan (data, teacher, init); only hyper-parameters change
        scores = []
        for k, seed in enumerate(seeds):
            result = runner.fit(objective_cls, seed, record, teacher_net).result
            score = float(result.best_select_score)
            if not math.isfinite(score):
                raise optuna.TrialPruned(f"seed {seed}: no finite selection score")
            scores.append(score)
            trial.set_user_attr(f"seed_{seed}", score)
            trial.report(score, step=k)  # seed by seed: the pruner compares seed k with seed k of other trials
            if k + 1 < len(seeds) and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after seed {seed}")
        return sum(scores) / len(scores)

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def grid_claimed(study, trial) -> None:  # every point finished or running, no retry waiting: a new trial would repeat one
        if (not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)) and
                len(study.get_trials(deepcopy=False, states=(*finished, optuna.trial.TrialState.RUNNING))) >= trials):
            study.stop()
    stops = [optuna.study.MaxTrialsCallback(trials, states=finished)] + ([grid_claimed] if grid else [])
    if len(study.get_trials(deepcopy=False, states=finished)) < trials:
        study.optimize(trial_fn, callbacks=stops, catch=(), gc_after_trial=True)


def _search_worker(index: int, cfg: RunConfig, fixed: set[str], trials: int, url: str, name: str, pruner: str,
                   sampler_seed: int, heartbeat: int, grid: dict[str, list] | None, threads: int) -> None:
    """One `--workers` process: its own runner (the teacher and team are read from the caches the parent filled) and
    its own TPE seed (sampler_seed + index: equal seeds would propose the same first trials), on the shared study. A
    grid keeps the one seed: Optuna's GridSampler gives trial number k the k-th point of an order shuffled by the
    seed, so workers of other seeds would repeat points and skip others."""
    exit_with_parent()
    import torch
    from rich.console import Console

    torch.set_num_threads(threads)
    runner = make_runner(cfg, Console(stderr=True, quiet=True), read_dev=False)
    runner.console = Console(stderr=True)
    seed = sampler_seed if grid else sampler_seed + index
    _optimize(_open_study(url, name, heartbeat, seed, pruner, cfg, grid), runner, fixed, trials, grid)
    runner.plan.store.close()


def _spawn_workers(processes: int, threads: int, args: tuple) -> list[int]:
    """Run ``_search_worker`` in ``processes`` spawned processes × ``threads`` threads; returns their exit codes."""
    procs = start_processes(_search_worker, [(w, *args, threads) for w in range(processes)], threads)
    for proc in procs:
        proc.join()
    return [proc.exitcode for proc in procs]


def run_search(cfg: RunConfig, fixed: set[str], trials: int, storage: str | None, study_name: str | None,
               pruner: str, sampler_seed: int, out: str | None, heartbeat: int, command: str,
               write_report_too: bool = True, grid: dict[str, list] | None = None) -> int:
    """Validate, open (or continue) the study, fill the caches, run the trials (in ``--workers`` processes when more
    than one: independent trials, the cores shared out), then write the report (not when ``write_report_too`` is
    False: a Slurm array task, whose study is its output)."""
    import optuna
    from rich.console import Console

    if trials < 1:
        raise UsageError(f"--trials must be >= 1 (got {trials})")
    if pruner not in PRUNERS:
        raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)} (got {pruner!r})")
    objective_cls = get_objective(cfg.objective)
    if grid:
        check_grid(grid, objective_cls, fixed, cfg)
    space = search_space(objective_cls, grid)
    free = [k for k in space if k not in fixed]
    console = Console(stderr=True)
    # validate everything (task, models, data, seeds) before the study exists; dev is never opened (read_dev=False)
    cfg.baseline = False
    runner = make_runner(cfg, console, read_dev=False)
    url = storage_url(storage, cfg.results)
    name = study_name or default_study_name(cfg, grid)
    study = _open_study(url, name, heartbeat, sampler_seed, pruner, cfg, grid)
    study.set_user_attr("objective", objective_cls.name)
    study.set_user_attr("task", cfg.task)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    processes, threads = resolve(cfg.workers, max(1, trials - done), runner.accelerator.device.type != "cpu")
    # trials run in spawned processes only without accelerate's own processes; one flag for the log line and the branch
    pooled = done < trials and processes > 1 and runner.accelerator.num_processes == 1
    console.print(f"study {name} in {display(url)}: {done} of {trials} trials finished; searching {', '.join(free) or 'nothing'}"
                  + (f" (fixed by flags: {', '.join(sorted(k for k in space if k in fixed))})" if fixed & set(space) else "")
                  + (f"; {processes} worker processes × {threads} thread(s)" if pooled else ""))
    codes: list[int] = []
    if pooled:
        runner.teacher()  # fine-tuned and cached here, once, before any worker starts; the workers load it
        runner.prepare_team()
        codes = _spawn_workers(processes, threads, (cfg, fixed, trials, url, name, pruner, sampler_seed, heartbeat, grid))
        if any(code != 0 for code in codes):
            console.print(f"[bold red]search worker exit codes {codes}: a rerun with the same --study continues[/]")
    elif done < trials:
        _optimize(study, runner, fixed, trials, grid)
    runner.plan.store.close()
    # no re-open needed: Optuna's RDB storage reads trials it has not seen (the workers') from the database on access
    out_dir = Path(out) if out else Path("reports") / f"search-{name}"
    if write_report_too:
        write_report(study, out_dir, command, display(url), objective_cls.name, free)
    if write_report_too and any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        console.print(f"best selection score {(100 if runner.plan.task.higher_is_better else 1) * study.best_value:.2f} with {study.best_params}; report in {out_dir}/README.md")
    return 1 if any(code != 0 for code in codes) else 0


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(study, out: Path, command: str, url: str, objective: str, free: list[str]) -> None:
    """The study's folder: ``trials.csv``, and ``README.md`` with the best trial, every trial and the plots."""
    import optuna

    out.mkdir(parents=True, exist_ok=True)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    names = sorted({k for t in trials for k in t.params})
    header, rows = _trial_rows(trials, names)
    with open(out / "trials.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    md = [f"# Search `{study.study_name}`", "", f"Command: `{command}`", "", f"Storage: `{url}`", "",
          f"Objective `{objective}`; searched: {', '.join(free) or 'nothing'}. Value: the selection-split main score (held "
          f"out of train) averaged over the seeds; dev was never read.", "",
          f"Trials: {len(trials)} ({len(complete)} complete, "
          f"{sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)} pruned, "
          f"{sum(t.state == optuna.trial.TrialState.FAIL for t in trials)} failed).", ""]
    if complete:
        best = study.best_trial
        flags = " ".join(f"--{k.replace('_', '-')} {_fmt(v)}" for k, v in best.params.items())
        md += ["## Best", "", f"Trial {best.number}: value {best.value:.4f}.", "", "| parameter | value |", "|---|---:|",
               *[f"| {k} | {_fmt(v)} |" for k, v in best.params.items()], "",
               "Run it on every seed and evaluate on dev:", "", "```bash",
               f"distilbench run --objective {objective} --params best:{study.study_name} ...   # or: {flags}", "```", ""]
    md += ["## Trials", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    md.append("")
    md += _search_plots(study, out, complete, names)
    (out / "README.md").write_text("\n".join(md), encoding="utf-8")


def _trial_rows(trials, names: list[str]) -> tuple[list[str], list[list]]:
    """(header, one row per trial) of ``trials.csv`` and the README's trial table."""
    seed_keys = sorted({k for t in trials for k in t.user_attrs if k.startswith("seed_")}, key=lambda k: int(k[5:]))
    header = ["number", "state", "value", *names, *seed_keys, "worker", "retry_of"]
    rows = []
    for t in trials:
        rows.append([t.number, t.state.name, "" if t.value is None else f"{t.value:.6f}",
                     *[_fmt(t.params.get(k, "")) for k in names], *[_fmt(t.user_attrs.get(k, "")) for k in seed_keys],
                     t.user_attrs.get("worker", ""), t.system_attrs.get("failed_trial", "")])
    return header, rows


def _search_plots(study, out: Path, complete: list, names: list[str]) -> list[str]:
    """``history.png`` (with a complete trial) and ``importance.png`` (fANOVA, with 3 complete trials and 2 searched
    parameters): the README's plots section."""
    import optuna

    md: list[str] = []
    plt = _plt()
    for stale in ("history.png", "importance.png"):
        (out / stale).unlink(missing_ok=True)
    if complete:
        fig, ax = plt.subplots(figsize=(5, 3))
        xs = [t.number for t in complete]
        ys = [100 * t.value for t in complete]
        best_so_far = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.scatter(xs, ys, s=14, label="trial")
        ax.step(xs, best_so_far, where="post", color="tab:red", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("selection score (%)")
        ax.set_title(f"optimisation history: {study.study_name}", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        _save(fig, out / "history.png")
        plt.close(fig)
        md += ["## Plots", "", "![optimisation history](history.png)", ""]
    importances = None
    if len(complete) >= 3 and len(names) >= 2:
        try:
            importances = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (RuntimeError, ValueError) as exc:
            md += [f"Parameter importances not computed: {exc}", ""]
    if importances:
        fig, ax = plt.subplots(figsize=(5, 0.5 + 0.35 * len(importances)))
        keys = list(importances)[::-1]
        ax.barh(keys, [importances[k] for k in keys])
        ax.set_xlabel("importance (fANOVA)")
        fig.tight_layout()
        _save(fig, out / "importance.png")
        plt.close(fig)
        md += ["![parameter importances](importance.png)", ""]
    elif complete:
        md += ["Parameter importances need at least 3 complete trials and 2 searched parameters.", ""]
    return md

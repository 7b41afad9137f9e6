"""`distilbench suite benchmarks/NAME.yaml`: run a benchmark grid cell by cell, then write its report.

A suite file is plain YAML data::

    name: p002-table1                  # optional; default: the file name without .yaml
    description: one line on what the suite reproduces
    tasks: [rte, mrpc]                 # grid: tasks × teachers × inits × objectives, each with every seed
    objectives: [none, kd, att-kl+hid-seq, {ted: {ted_teacher_filters: random}}]   # an entry {NAME: {options}}
                                       # is one more cell of NAME with those RunConfig options (an ablation)
    inits: [every-k]                   # any --init spec: layers:1,2,3 | every-k | first-k | last-k | random | pretrained:MODEL
    teachers: [mpnet-base]
    seeds: [0, 1, 2]                   # or a count: 3 (= 0, 1, 2)
    settings: {student_layers: 3}      # RunConfig options for every scale (`distilbench run --help`); `team: [A, B]`
                                       # sets --teachers of the multi-teacher objectives (autoskd, skd, avgkd) only
    task_settings: {sst2: {max_train_examples: 2000}}
    slurm: {partition: gpu, time: 240, cpus: 8, gpus: 1}   # --launcher slurm: each array task's resources
    pretrain: {corpus: general-local, tokens: 2000000, students: {g: {objective: att-mse, init: random}}}
                                       # general students distilled before the cells, inits `general:NAME` (.general)
    claims:                            # what the report's cells test: verdicts computed by distilbench.results.claims
      - {id: ted-lwd, paper: 001 Table 2, claim: TED beats LWD, paper_numbers: "QNLI 93.1 vs 92.9", better: ted, worse: lwd}
    scales:                            # --scale NAME picks one; its keys override the ones above
      cpu: {epochs: 2}
      paper: {teachers: [FacebookAI/roberta-base], epochs: 10, task_settings: {sst2: {max_train_examples: null}}}

A scale holds RunConfig options plus, optionally, its own ``tasks``, ``objectives``, ``inits``, ``teachers``,
``seeds``, ``task_settings``, ``claims``, ``slurm`` and ``pretrain`` (which replace the suite's: its cells may be labelled differently). Precedence for one cell: RunConfig defaults < ``settings`` < the scale's options <
``task_settings`` (suite, then scale) < command-line flags < the grid (task, objective and an objective entry's
own options, init, teacher, seeds). Two entries of one objective are told apart in the report by the options that
differ (``ted [ted_teacher_filters=random]``).
The ``none`` baseline is a grid objective like any other (the runner's automatic baseline is off).

Every cell is validated before anything trains (one error line naming every unknown objective); then each runs
through ``training.families.make_runner(RunConfig(...)).run()``, which skips stored seeds: a suite resumes where it
stopped, and processes sharing one store divide the grid under leases (:mod:`distilbench.results.leases`), each
waiting at the end for the runs others hold, so that every process's report holds the whole grid. The report of the
suite's rows goes to ``reports/NAME/`` (``reports/NAME-SCALE/`` for a scale other than cpu).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.markup import escape  # a cell label such as "ted [beta=1.0]" is text, not console markup

from ..config import RunConfig, _coerce, all_options, option_names, read_yaml
from ..data.tasks import get_task, task_run_defaults
from ..errors import UsageError
from ..objectives import OBJECTIVES, get_objective, load_all
from ..report.build import build_report
from ..results.backends import display
from ..results.claims import parse_claims
from ..training.families import runner_class
from ..training.runs.plan import plan_run
from ..training.runs.workers import resolve
from . import general as suite_general
from .cells import run_cells, run_pooled

GRID = ("tasks", "objectives", "inits", "teachers", "seeds")
TOP_KEYS = ("name", "description", *GRID, "settings", "task_settings", "scales", "claims", "slurm", "pretrain")
# RunConfig fields a suite sets per cell itself: never options in the YAML or on the command line
CELL_FIELDS = ("task", "objective", "init", "teacher", "student", "seeds", "seed_list", "baseline")


def suite_flags(names=None) -> tuple[str, ...]:
    """The options a suite takes from its YAML and command line: every run option (``names``; default: all declared
    so far) except those set per cell."""
    return tuple(n for n in (names if names is not None else (o.name for o in all_options())) if n not in CELL_FIELDS)


DEFAULT_SCALE = "cpu"


@dataclass
class Suite:
    name: str
    path: Path
    scale: str
    description: str
    tasks: list[str]
    objectives: list[str]  # the objective names, in order, each once
    inits: list[str]
    teachers: list[str]
    seeds: list[int]
    settings: dict[str, Any]  # merged options of every cell (before task_settings)
    task_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # command-line flags
    claims: list = field(default_factory=list)  # what the report's cells test (distilbench.results.claims), as written
    slurm: dict[str, Any] = field(default_factory=dict)  # `slurm:` options of --launcher slurm (distilbench.cluster), as written
    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (objective, its own options) per cell;
    # default: each of ``objectives`` with none
    general: suite_general.GeneralStudents | None = None  # `pretrain:`: general students, inits `general:NAME`

    def __post_init__(self):
        self.entries = self.entries or [(name, {}) for name in self.objectives]

    def configs(self) -> list[RunConfig]:
        """One validated RunConfig per cell, in run order: task, teacher, init, objective (a teacher is fine-tuned
        once per task and reused by every cell after it)."""
        return [cfg for _, cfg in self.cells()]

    def cells(self) -> list[tuple[str, RunConfig]]:
        """(label, RunConfig) per cell in run order; the label is task/objective [own options]/init/teacher."""
        out = []
        for task in self.tasks:
            for teacher in self.teachers:
                for init in self.inits:
                    for objective, own in self.entries:
                        values = {**task_run_defaults(task), **self.settings, **self.task_settings.get(task, {}),
                                  **self.overrides, **own,
                                  "task": task, "objective": objective, "init": init, "teacher": teacher,
                                  "seed_list": ",".join(str(s) for s in self.seeds), "baseline": False}
                        if not _multi_teacher(objective):  # a suite's team (`teachers: A,B` in settings) is for those that use one
                            values.pop("teachers", None)
                        label = f"{task}/{_entry_label(objective, own)}/{init}/{teacher}"
                        try:
                            if self.general is not None:  # general:NAME -> pretrained:OUT/NAME
                                values["init"] = self.general.init_spec(init, f"suite {self.path}")
                            out.append((label, RunConfig(**values).validate()))
                        except UsageError as exc:
                            raise UsageError(f"suite {self.path}, cell {label}: {exc}") from None
        return out


def _entry_label(objective: str, own: dict[str, Any]) -> str:
    return objective + (f" [{', '.join(f'{k}={v}' for k, v in own.items())}]" if own else "")


def _objective_entries(value: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """``objectives:`` items: a name, or ``{NAME: {option: value, ...}}`` (one more cell of NAME with its own options)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise UsageError(f"{where} must be a non-empty list of objective names or {{NAME: {{option: value}}}} entries "
                         f"(got {value!r})")
    out: list[tuple[str, dict[str, Any]]] = []
    for item in value:
        if isinstance(item, str) and item.strip():
            entry = (item.strip(), {})
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str):
            name, opts = next(iter(item.items()))
            entry = (name.strip(), _options(_mapping(opts, f"{where}: {name}"), f"{where}: {name}")[0])
        else:
            raise UsageError(f"{where}: {item!r} is neither an objective name nor one {{NAME: {{option: value}}}} entry")
        if entry in out:
            raise UsageError(f"{where} lists {_entry_label(*entry)} twice")
        out.append(entry)
    return out


def _multi_teacher(objective: str) -> bool:

    try:
        return get_objective(objective).multi_teacher
    except (UsageError, KeyError, ValueError):
        return False  # an unknown objective is reported by the cell's validation


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping (got {type(value).__name__})")
    return value


def _options(values: dict, where: str, allow_grid: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a mapping into (RunConfig options, grid keys); refuse anything else in one line."""
    load_all()  # every objective's options are declared, third-party ones too
    known = option_names()
    options, grid = {}, {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name == "team":  # the team of multi-teacher objectives (RunConfig.teachers; `teachers` is the grid's axis)
            options["teachers"] = _coerce("teachers", ",".join(map(str, value)) if isinstance(value, list) else value, where)
        elif allow_grid and name in (*GRID, "task_settings", "claims", "slurm", "pretrain"):
            grid[name] = value
        elif name in CELL_FIELDS:
            hint = {"student": "list it in inits as pretrained:MODEL", "baseline": "list none in objectives"}.get(
                name, f"set it in the suite's {name.rstrip('s') if name != 'seed_list' else 'seed'}s list")
            raise UsageError(f"{where}: {key!r} is set per cell by the suite grid; {hint}")
        elif name in known:
            options[name] = _coerce(name, value, where)
        else:
            accepted = sorted(known - set(CELL_FIELDS)) + (list(GRID) + ["task_settings", "claims", "slurm", "pretrain"] if allow_grid else [])
            raise UsageError(f"{where}: unknown option {key!r}; accepted: {', '.join(accepted)}")
    return options, grid


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f"{where} must be a non-empty list of names (got {value!r})")
    if len(set(value)) != len(value):
        raise UsageError(f"{where} lists a name twice: {value!r}")
    return [v.strip() for v in value]


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise UsageError(f"{where} must be >= 1 (got {value})")
        return list(range(value))
    if (not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                             for s in value) or len(set(value)) != len(value)):
        raise UsageError(f"{where} must be a count or a list of distinct non-negative integers (got {value!r})")
    return list(value)


def _task_settings(value: Any, where: str) -> dict[str, dict[str, Any]]:
    out = {}
    for task, opts in _mapping(value, where).items():
        out[str(task)] = _options(_mapping(opts, f"{where}.{task}"), f"{where}.{task}")[0]
    return out


def load_suite(path: str | Path, scale: str = DEFAULT_SCALE, overrides: dict[str, Any] | None = None) -> Suite:
    """Read and check a suite file for one scale; names are checked by :func:`validate`."""
    path = Path(path)
    data = read_yaml(path, "suite")
    data = _mapping(data, f"suite {path}")
    unknown = sorted(str(k) for k in data if k not in TOP_KEYS)
    if unknown:
        raise UsageError(f"suite {path}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(TOP_KEYS)}")
    scales = _mapping(data.get("scales"), f"suite {path}: scales")
    if scales and scale not in scales:
        raise UsageError(f"suite {path} has no scale {scale!r}; its scales: {', '.join(map(str, scales))}")
    if not scales and scale != DEFAULT_SCALE:
        raise UsageError(f"suite {path} declares no scales; drop --scale {scale}")
    settings = _options(_mapping(data.get("settings"), f"suite {path}: settings"), f"suite {path}: settings")[0]
    scale_options, scale_grid = _options(_mapping(scales.get(scale), f"suite {path}: scales.{scale}"),
                                         f"suite {path}: scales.{scale}", allow_grid=True)
    grid = {k: data.get(k) for k in GRID}
    grid.update({k: v for k, v in scale_grid.items() if k in GRID})
    task_settings = _task_settings(data.get("task_settings"), f"suite {path}: task_settings")
    for task, opts in _task_settings(scale_grid.get("task_settings"), f"suite {path}: scales.{scale}.task_settings").items():
        task_settings[task] = {**task_settings.get(task, {}), **opts}
    missing = [k for k in GRID if grid.get(k) is None]
    if missing:
        raise UsageError(f"suite {path}: missing {', '.join(missing)} (the grid needs tasks, objectives, inits, "
                         f"teachers and seeds)")
    tasks = _str_list(grid["tasks"], f"suite {path}: tasks")
    entries = _objective_entries(grid["objectives"], f"suite {path}: objectives")
    stray = sorted(set(task_settings) - set(tasks))
    if stray:
        raise UsageError(f"suite {path}: task_settings for {', '.join(stray)}, which is not in tasks ({', '.join(tasks)})")
    claims = scale_grid["claims"] if "claims" in scale_grid else data.get("claims")  # a scale's own replace the suite's
    name = str(data.get("name") or path.stem)
    general = _general(data, scale_grid, path, scale)
    claims = suite_general.claims_inits(claims, general, f"suite {path}: claims")
    try:  # checked now, before anything trains; the report computes their verdicts
        parse_claims(claims, f"suite {path}" + (f": scales.{scale}" if "claims" in scale_grid else ""))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    slurm = scale_grid["slurm"] if "slurm" in scale_grid else data.get("slurm")  # a scale's own replace the suite's
    slurm = _mapping(slurm, f"suite {path}: slurm")
    inits = _str_list(grid["inits"], f"suite {path}: inits")
    if general is None and any(i.startswith(suite_general.PREFIX) for i in inits):
        raise UsageError(f"suite {path}: inits name general students ({suite_general.PREFIX}NAME) but the suite has no "
                         "pretrain block")
    return Suite(name=name, path=path, scale=scale, claims=list(claims or []), slurm=slurm, general=general,
                 description=str(data.get("description") or "").strip(), tasks=tasks,
                 objectives=list(dict.fromkeys(name for name, _ in entries)), entries=entries,
                 inits=inits,
                 teachers=_str_list(grid["teachers"], f"suite {path}: teachers"),
                 seeds=_seeds(grid["seeds"], f"suite {path}: seeds"),
                 settings={**settings, **scale_options}, task_settings=task_settings, overrides=dict(overrides or {}))


def validate(suite: Suite) -> list[tuple[str, RunConfig]]:
    """Check every name and every cell before anything trains; one UsageError naming all unknown objectives."""
    problems = []
    for name in suite.objectives:
        try:
            get_objective(name)
        except UsageError as exc:
            problems.append(str(exc).split(" Accepted:")[0])
    if problems:
        raise UsageError(f"suite {suite.path}: {len(problems)} objective(s) not available: {' '.join(problems)} "
                         f"Registered: {', '.join(OBJECTIVES.names())} (and + combinations of layer objectives)")
    for task in suite.tasks:
        try:
            get_task(task)
        except UsageError as exc:
            raise UsageError(f"suite {suite.path}: {exc}") from None
    cells = suite.cells()
    for label, cfg in cells:  # the runner's own checks (data, init, models, vocabularies), without training
        try:
            plan = plan_run(_stand_in(suite, cfg), runner_class(get_task(cfg.task)))
        except UsageError as exc:
            raise UsageError(f"suite {suite.path}, cell {label}: {exc}") from None
        plan.store.close()
    return cells


def _stand_in(suite: Suite, cfg: RunConfig) -> RunConfig:
    """The cell to check before anything trains: a general student not distilled yet is checked as the random student
    of its shape (the task, data, teacher and options are the cell's own)."""
    general = suite.general
    if general is None or not cfg.init.startswith("pretrained:"):
        return cfg
    name = next((n for n in general.students if cfg.init == f"pretrained:{general.folder(n).as_posix()}"), None)
    if name is None or general.folder(name).is_dir():
        return cfg
    # the student's own teacher has its vocabulary and pooling: the cell's checks of those hold for the student
    return replace(cfg, init=f"pretrained:{general.config(name, suite.overrides).teacher}")


def general_plans(suite: Suite) -> list:
    """The plans of the general students the grid fine-tunes, after every student's is checked (none without a
    pretrain block)."""
    if suite.general is None:
        return []
    planned = suite_general.plans(suite.general, list(suite.general.students), f"suite {suite.path}", suite.overrides)
    wanted = suite_general.used(suite.general, suite.inits)
    return [(name, plan) for name, plan in planned if name in wanted]


def _general(data: dict, scale_block: dict, path: Path, scale: str) -> suite_general.GeneralStudents | None:
    """The pretrain block of one scale (its own, else the file's), its students' folder defaulting to
    ``students/NAME[-SCALE]``."""
    return suite_general.parse(scale_block["pretrain"] if "pretrain" in scale_block else data.get("pretrain"),
                               f"suite {path}: pretrain", Path("students") / _scaled(str(data.get("name") or path.stem), scale))


def claims_as_stored(data: dict, path: str | Path, scale: str | None, claims: list) -> list:
    """A suite file's claims read outside `distilbench suite` (`distilbench report --claims FILE[:SCALE]`), their
    ``init: general:NAME`` written as the cells store them (``pretrained:OUT/NAME``, OUT from that scale's pretrain
    block, else the file's; no scale: the default one, as `distilbench suite FILE` runs)."""
    scale = scale or DEFAULT_SCALE
    own = (data.get("scales") or {}).get(scale) if isinstance(data.get("scales"), dict) else None
    general = _general(data, own if isinstance(own, dict) else {}, Path(path), scale)
    return suite_general.claims_inits(claims, general, f"--claims {path}")


def _scaled(name: str, scale: str) -> str:
    return name if scale == DEFAULT_SCALE else f"{name}-{scale}"


def default_out(suite: Suite) -> Path:
    return Path("reports") / _scaled(suite.name, suite.scale)


@dataclass
class SuiteResult:
    """What a suite run leaves: the report of its rows (None when nothing finished) and the cells that diverged."""
    report: Any = None  # report.build.Report
    failed: list[str] = field(default_factory=list)

    @property
    def code(self) -> int:
        """Exit code: 0, or 1 when a cell's training diverged."""
        return 1 if self.failed else 0


def run_suite(suite: Suite, command: str, out: str | Path | None = None, console=None, write_report: bool = True,
              pretrain_only: bool = False) -> SuiteResult:
    """Validate, run every cell (stored seeds are skipped), write the report of the suite's rows (unless ``write_report``
    is False: a Slurm array task, whose store is the output). A cell whose
    training diverged does not stop the others; the report shows what finished. Progress goes to ``console``
    (default stderr); the report's tables are the caller's to print (``cli.suite``)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    planned = general_plans(suite)  # checked first: a cell's check opens the results store
    absent = suite_general.missing(planned)
    if absent and not write_report:  # a Slurm array task: its siblings would distil the same students
        raise UsageError(f"suite {suite.path}: general student(s) {', '.join(absent)} not distilled yet: run "
                         f"`distilbench suite {suite.path} --scale {suite.scale} --pretrain-only` first")
    cells = validate(suite)
    configs = [cfg for _, cfg in cells]
    suite_general.build(planned, lambda line: console.print(escape(line), soft_wrap=True), command)  # before the cells
    if pretrain_only:
        return SuiteResult()
    console.print(f"suite {suite.name} ({suite.scale} scale): {len(configs)} cells × {len(suite.seeds)} seeds "
                  f"= {len(configs) * len(suite.seeds)} runs, results in {display(configs[0].results)}")
    if resolve(configs[0].workers, 2)[0] > 1:  # every cell's runs into one pool of workers
        cell_rows, failed = run_pooled(cells, console)
    else:
        cell_rows, failed = run_cells(cells, console)
    rows = [r for part in cell_rows for r in part]
    out = Path(out) if out is not None else default_out(suite)
    report = None
    if rows and write_report:
        report = build_report(rows, out, command=command, results=display(configs[0].results),
                              title=f"{suite.name} ({suite.scale} scale)" + (f": {suite.description}" if suite.description else ""),
                              orders={"tasks": suite.tasks, "objectives": suite.objectives,
                                      "inits": list(dict.fromkeys(r["init"] for r in rows))},
                              claims=suite.claims or None)
    return SuiteResult(report, failed)

"""Typed run configuration. Precedence, in one place: CLI flag > YAML file (``--config``) > the defaults below.

``RunConfig``'s fields are the run's and the harness's: the task, the models, the training, the data. An objective's
own options (TED's filters, AutoSKD's θ, a KD temperature) are declared on the objective's class as
:class:`~distilbench.options.Option` and registered when the objective is (:func:`~distilbench.options.declare_options`);
a RunConfig takes them as keywords, reads them as
attributes and keeps the given ones in ``options``. Flags, YAML keys, validation and the search space are generated
from both (:func:`all_options`). Every option carries its help text; ``validate`` raises :class:`UsageError` (a
``ValueError``) with a message that names the bad value and what is accepted, never ``assert``. Bottom layer:
imports only ``errors`` and ``options``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError
from .options import DATA, DECLARED, GROUPS, MODELS, OBJECTIVES, RESERVED, TRAINING, Option


def _f(default: Any, help: str, group: str, choices: tuple[str, ...] | None = None) -> Any:
    """A RunConfig field: its help text, its `--help` section and, for a fixed set of values, the accepted ones."""
    if group not in GROUPS:  # a typo in this file, not user input: fails at import
        raise ValueError(f"unknown option group {group!r}; accepted: {', '.join(GROUPS)}")
    return field(default=default, metadata={"help": help, "group": group, **({"choices": choices} if choices else {})})


@dataclass
class _RunFields:
    task: str = _f("rte", "GLUE task name (see `distilbench ls tasks`).", group=DATA)
    objective: str = _f("kd", "distillation objective (see `distilbench ls objectives`); `none` = plain fine-tuning.", group=OBJECTIVES)
    teacher: str = _f("mpnet-base", "teacher: an embedded alias (mpnet-base, minilm-l6), a hub id or a local path.", group=MODELS)
    student: str | None = _f(None, "student model: alias, hub id or path; shorthand for --init pretrained:MODEL.", group=MODELS)
    pooling: str | None = _f(None, "sentence representation of teacher and student for sentence tasks (the classification or "
                                   "regression head, hid-cls, hid-cls-contrast, TED's filter heads): cls (first token) | mean (over the "
                                   "real tokens). Default: each model's own (`distilbench ls models`: mean for the embedded "
                                   "sentence-transformers, cls for MLM-pretrained models). Stored in every row.", group=MODELS,
                             choices=("cls", "mean"))
    init: str = _f("first-k", "student initialisation: layers:1,2,3 | every-k | first-k | last-k | random | pretrained:MODEL.", group=MODELS)
    student_layers: int = _f(3, "number of student layers for every-k / first-k / last-k / random.", group=MODELS)
    student_hidden: int | None = _f(None, "hidden size of a --init random student (default: the teacher's). It keeps the "
                                    "teacher's attention heads, so it must be a multiple of their number; the feed-forward "
                                    "size scales with it.", group=MODELS)
    seeds: int = _f(1, "run seeds 0..N-1 (paired: seed k gives every objective the same data order and init).", group=TRAINING)
    seed_list: str | None = _f(None, "comma-separated explicit seeds, instead of --seeds.", group=TRAINING)
    epochs: float = _f(3.0, "student training epochs.", group=TRAINING)
    lr: float = _f(5e-5, "student peak learning rate (AdamW, linear warm-up and decay).", group=TRAINING)
    batch_size: int = _f(16, "training batch size.", group=TRAINING)
    eval_batch_size: int = _f(64, "evaluation batch size.", group=TRAINING)
    max_length: int = _f(128, "maximum tokens per example (dynamic padding below it).", group=TRAINING)
    warmup_ratio: float = _f(0.1, "share of training steps for linear warm-up.", group=TRAINING)
    weight_decay: float = _f(0.01, "AdamW weight decay.", group=TRAINING)
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off).", group=TRAINING)
    layer_map: str = _f("init", "which teacher layer each student layer learns from: init | uniform | last | ted | 4,8,12.", group=OBJECTIVES)
    teachers: str | None = _f(None, "multi-teacher objectives (autoskd, skd, avgkd): the team, comma-separated aliases, ids or paths; NAME@INIT is a truncated fine-tuned teacher, e.g. mpnet-base@first-3 (the student's own architecture, a weak teacher).", group=MODELS)
    teacher_cache: str = _f("fp32", "teacher-output cache (hidden states, attention scores, values of the mapped layers; computed once, memory-mapped): fp32 | fp16 | off (run the teacher every step).", group=MODELS, choices=('fp32', 'fp16', 'off'))
    bpe_vocab: int = _f(8192, "causal LM, a from-scratch teacher (--teacher scratch:SIZE): the byte-level BPE vocabulary trained on the training text.", group=MODELS)
    teacher_topk: int | None = _f(None, "causal LM: cache the teacher's top-K next-token log-probabilities per position (at --temperature) with the rest mass, computed once per teacher and training blocks, for objectives that read only logits (kd, kd-reverse, gkd-jsd); an approximation of the KL bounded by the teacher's tail (distilbench.training.teachers.lm_topk). Default: the live teacher each step.", group=MODELS)
    eval_stride: int | None = _f(None, "causal LM: the perplexity evaluation stride in tokens (default --max-length: non-overlapping blocks; smaller: a sliding window). Stored in every row.", group=DATA)
    teacher_epochs: float = _f(3.0, "teacher fine-tuning epochs.", group=MODELS)
    teacher_lr: float = _f(3e-5, "teacher fine-tuning learning rate.", group=MODELS)
    teacher_seed: int = _f(0, "seed of the (single, cached) teacher fine-tuning run.", group=MODELS)
    teacher_micro_batch: int = _f(4, "teacher fine-tuning: run each batch as micro-batches of at most this many examples whose gradients add up to the batch's (the same update in less memory: a base-size teacher's longest batches of 16 peaked at 4.5 GiB whole, 3.8 GiB in parts of 8, 3.1 GiB in parts of 4, which cost ~16%% of its speed); 0 = whole batches.", group=MODELS)
    selection_fraction: float = _f(0.1, "seeded held-out slice of train used for every selection (best epoch); dev is never used to select.", group=TRAINING)
    select_best_epoch: bool = _f(True, "keep the epoch with the best selection-split score.", group=TRAINING)
    max_train_examples: int | None = _f(None, "subsample train to N examples (fixed, reproducible sample).", group=DATA)
    teacher_max_train_examples: int | None = _f(None, "fine-tune the teacher on N training examples of the same fixed sample, "
                                                "of which the students' --max-train-examples are a subset: a teacher trained on "
                                                "more labelled data than its students (sentence tasks). Default: the students' sample.",
                                                group=DATA)
    transfer_examples: int | None = _f(None, "a transfer set: N more training examples of the same fixed sample, beyond "
                                       "--max-train-examples, whose labels are dropped: only the teacher labels them. Objectives "
                                       "that read a teacher train on both (their task loss on the labelled ones alone); `none` and "
                                       "the selection split use the labelled ones (sentence tasks).", group=DATA)
    max_eval_examples: int | None = _f(None, "evaluate on the first N dev examples only (quick looks; not comparable).", group=DATA)
    data_dir: str | None = _f(None, "GLUE_DIR-layout folder (RTE/train.tsv, ...); default $GLUE_DIR, else the nyu-mll/glue hub.", group=DATA)
    results: str = _f("runs/results.sqlite", "results store: an SQLite file, or a PostgreSQL URL (postgresql+psycopg2://USER@HOST:PORT/DB) that processes on several machines share, dividing the runs between them.", group=DATA)
    save_students: str | None = _f(None, "keep each run's trained student: a transformers folder (weights, tokenizer, a classifier's labels, "
                                         "model card README.md, distilbench.json; classification, extractive QA and causal LMs) under DIR/TASK/OBJECTIVE/INIT/seedK-RUNKEY; not part of the "
                                         "run's identity (see `distilbench export`).", group=DATA)
    force: bool = _f(False, "rerun and replace rows that already exist.", group=DATA)
    baseline: bool = _f(True, "also run the `none` baseline (same student, no teacher) for the table.", group=OBJECTIVES)
    cpu: bool = _f(False, "force the CPU even when an accelerator is present.", group=TRAINING)
    mixed_precision: str = _f(os.environ.get("DISTILBENCH_MIXED_PRECISION", "auto"),
                              "auto | no (= fp32) | fp32 | bf16 | fp16. auto: bf16 autocast on a CUDA device with bf16; on a CPU only with "
                              "AMX-BF16 or AVX512-BF16 and a one-off probe measuring it faster (cached per machine); else fp32. "
                              "The precision used is stored in every row and is part of the run identity (fp32 keys unchanged). "
                              "Default: $DISTILBENCH_MIXED_PRECISION, else auto.", group=TRAINING,
                              choices=("auto", "no", "fp32", "bf16", "fp16"))
    progress: bool = _f(True, "show a progress bar.", group=DATA)
    workers: str = _f(os.environ.get("DISTILBENCH_WORKERS", "auto"), "run independent (objective, seed) runs in N processes with the cores shared out among them, "
                           "or auto (CPU: one single-thread process per core, measured 1.18x faster than one 2-thread process "
                           "on 2 cores; an accelerator: 1). Teachers, caches and TED's Stage I are built first, once. "
                           "Default: $DISTILBENCH_WORKERS, else auto.", group=TRAINING)

    # the objectives' options given (those differing from their defaults), by name: RunConfig(theta_lr=1e-3) keeps
    # {"theta_lr": 0.001} here and cfg.theta_lr reads it back (see RunConfig)
    options: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})

    def validate(self) -> "RunConfig":
        positive = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "max_length": self.max_length, "teacher_epochs": self.teacher_epochs,
                    "teacher_lr": self.teacher_lr, "student_layers": self.student_layers}
        for name, value in positive.items():
            if value is None or value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0 (got {value})")
        if self.student_hidden is not None and (isinstance(self.student_hidden, bool) or not isinstance(self.student_hidden, int)
                                                or self.student_hidden <= 0):
            raise UsageError(f"--student-hidden must be a width >= 1 (got {self.student_hidden!r})")
        if self.seed_list is None and self.seeds < 1:
            raise UsageError(f"--seeds must be >= 1 (got {self.seeds}); use --seeds N for seeds 0..N-1 or --seed-list 0,3,7")
        if self.teacher_micro_batch < 0:
            raise UsageError(f"--teacher-micro-batch must be >= 0 (0 = whole batches; got {self.teacher_micro_batch})")
        if not 0.0 < self.selection_fraction < 1.0:
            raise UsageError(f"--selection-fraction must be in (0, 1) (got {self.selection_fraction})")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UsageError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.transfer_examples is not None and (self.transfer_examples < 1 or self.max_train_examples is None):
            raise UsageError(f"--transfer-examples {self.transfer_examples}: a count of at least 1 unlabelled examples beyond "
                             f"the students' --max-train-examples ({self.max_train_examples}), which must be given")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
        if self.teacher_max_train_examples is not None and (
                self.teacher_max_train_examples < (self.max_train_examples or 1) or self.max_train_examples is None):
            raise UsageError(f"--teacher-max-train-examples {self.teacher_max_train_examples}: a count of at least the "
                             f"students' --max-train-examples ({self.max_train_examples}), which must be given: the teacher's "
                             f"sample holds the students'")
        for option in all_options():  # the flags refuse these too; a YAML value arrives here unchecked
            option.check(getattr(self, option.name))
        if self.teacher_topk is not None and self.teacher_topk < 1:
            raise UsageError(f"--teacher-topk must be >= 1 (got {self.teacher_topk})")
        if self.bpe_vocab < 257 or (self.eval_stride is not None and not 1 <= self.eval_stride <= self.max_length):
            raise UsageError(f"--bpe-vocab must be >= 257 and --eval-stride in 1..--max-length {self.max_length} "
                             f"(got {self.bpe_vocab}, {self.eval_stride})")
        if self.student is not None:
            if self.init not in ("first-k", f"pretrained:{self.student}"):  # first-k is the default: --student overrides it
                raise UsageError(f"--student {self.student} conflicts with --init {self.init}; give one of them")
            self.init = f"pretrained:{self.student}"
        if self.save_students is not None:
            check_folder("--save-students", self.save_students)
        self.workers = parse_workers(self.workers)
        self.seed_values()
        return self

    def seed_values(self) -> list[int]:
        if self.seed_list is None:
            return list(range(self.seeds))
        try:
            seeds = [int(s) for s in str(self.seed_list).split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seed-list must be comma-separated integers (got {self.seed_list!r})") from None
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise UsageError(f"--seed-list must hold distinct non-negative integers (got {self.seed_list!r})")
        return seeds


RESERVED.update(f.name for f in dataclasses.fields(_RunFields))


class RunConfig(_RunFields):
    """The run's configuration: ``_RunFields``'s fields, plus the options the registered objectives declare
    (:func:`declare_options`), given as keywords and read as attributes (``cfg.ted_filter``); a declared option nobody
    gave reads as its default. ``dataclasses.asdict`` / ``replace`` carry them in ``options``."""

    def __init__(self, options: dict[str, Any] | None = None, **values: Any):
        given = dict(options or {})
        for name in [n for n in values if n in DECLARED]:
            given[name] = values.pop(name)
        unknown = sorted(n for n in given if n not in DECLARED)
        if unknown:  # a caller's defect (user input is checked against all_options() first)
            raise TypeError(f"RunConfig: no registered objective declares {', '.join(unknown)}")
        super().__init__(**values)
        for name, value in given.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only for names that are not fields: the declared options
        option = DECLARED.get(name)
        if option is None:
            raise AttributeError(f"'RunConfig' object has no attribute {name!r}")
        return self.__dict__.get("options", {}).get(name, option.default)

    def __setattr__(self, name: str, value: Any) -> None:
        option = DECLARED.get(name)
        if option is None:
            return object.__setattr__(self, name, value)
        given = {k: v for k, v in self.options.items() if k != name}
        if value != option.default:
            given[name] = value
        object.__setattr__(self, "options", given)


@functools.cache
def _field_options() -> dict[str, Option]:
    """RunConfig's own fields as options, in their order (fixed: computed once)."""
    hints = typing.get_type_hints(_RunFields)
    return {f.name: Option(f.name, hints[f.name], f.default, f.metadata["help"], f.metadata["group"], f.metadata.get("choices"))
            for f in dataclasses.fields(_RunFields) if not f.metadata.get("internal")}


def option(name: str) -> Option:
    """The option ``name`` (a RunConfig field or a declared one); KeyError when there is none."""
    return _field_options()[name] if name in _field_options() else DECLARED[name]


def all_options() -> list[Option]:
    """Every option a run takes: RunConfig's fields (in their order), then the declared objectives' options."""
    return [*_field_options().values(), *DECLARED.values()]


def option_names() -> set[str]:
    return {*_field_options(), *DECLARED}


def check_folder(flag: str, value: str) -> None:
    """An output folder that can be created or written, checked without writing anything (bad input writes nothing)."""
    path = Path(str(value)).expanduser()
    if not str(value).strip():
        raise UsageError(f"{flag} needs a folder path (got an empty one)")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {value} is a file; give a folder (it is created when missing)")
    parent = path
    while not parent.exists():  # the nearest existing ancestor is where the folder would be created
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {value}: cannot write in {parent}; give a writable folder")


# what a run is (its cell and seeds) or where and how it runs and reports: never "settings" of what it measured.
# --mixed-precision is a request (auto decides per machine): the precision it resolved to is what a row records
# (``precision`` in its settings when not fp32, see training.runs.plan.run_settings)
# --pooling: the pooling it resolved to is recorded instead (``pooling`` in a row's identity and extra, in report headers)
_NOT_SETTINGS = ("task", "objective", "teacher", "student", "init", "pooling", "seeds", "seed_list", "data_dir", "results", "force",
                 "baseline", "progress", "cpu", "teachers", "workers", "mixed_precision",
                 "save_students")


def nondefault_settings(cfg: RunConfig) -> dict[str, Any]:
    """The options of ``cfg`` that differ from the defaults and change what is measured (cut-down data, shorter
    training, other hyper-parameters): what a table title must say about its numbers."""
    return {o.name: getattr(cfg, o.name) for o in all_options()
            if o.name not in _NOT_SETTINGS and getattr(cfg, o.name) != o.default}


def read_yaml(path: str | Path, what: str) -> Any:
    """The data of a YAML file; an unreadable or malformed file is one UsageError naming ``what`` it is."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config is plain data: keys are RunConfig field names (dashes or underscores)."""
    data = read_yaml(path, "config") or {}
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a mapping of option: value")
    known = option_names()
    return checked_options(data, f"config {path}", known, f"accepted: {', '.join(sorted(known))}")


def checked_options(data: dict, where: str, known: set[str], accepted: str) -> dict[str, Any]:
    """Option name (dashes or underscores) -> value, each name checked against ``known`` and each value converted to
    its field's type (:func:`_coerce`); anything wrong is a one-line UsageError naming ``where``."""
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UsageError(f"{where}: unknown option {key!r}; {accepted}")
        out[name] = _coerce(name, value, where)
    return out


NOT_TASK_DEFAULTS = ("task", "seeds", "seed_list", "objective", "results", "data_dir")


def task_defaults(value: Any, source: str) -> dict[str, Any]:
    """A task file's ``defaults:`` mapping (option names with dashes or underscores, as in a --config YAML): what a run
    of that task uses where neither the command line nor --config sets the option. Anything wrong is a ValueError
    naming ``source`` (a broken registry file, found when the registry loads)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"task file {source}: defaults must be a mapping of option: value")
    known = option_names() - set(NOT_TASK_DEFAULTS)
    try:
        return checked_options(value, f"task file {source}: defaults", known,
                        f"accepted: run's options except {', '.join(NOT_TASK_DEFAULTS)}")
    except UsageError as exc:
        raise ValueError(str(exc)) from None


def _coerce(name: str, value: Any, where: str) -> Any:
    """YAML reads `lr: 1e-3` as a string: convert each value to its field's type, or refuse it in one line."""
    found = option(name)
    kind, base = found.kind, found.base
    if value is None and type(None) in typing.get_args(kind):
        return None
    bools = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    try:
        if base is bool:
            return value if isinstance(value, bool) else bools[str(value).lower()]
        if isinstance(value, bool) and base is not str:
            raise ValueError("a boolean is not a number")
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        return base(value)
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{where}: {name} must be {base.__name__} (got {value!r})") from None


def parse_workers(value: str) -> str:
    """Validate a --workers value: a positive integer or auto."""
    if str(value) == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise UsageError(f"--workers must be a positive integer or auto (got {value!r})")
    return str(n)


def merge_options(cli: dict[str, Any], yaml_path: str | None = None,
                  defaults_of: Callable[[str], dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's options: the task's own defaults (``defaults_of(task)``, from its registry file) < YAML < explicitly
    given CLI flags (the dataclass's defaults fill the rest). Also returns the task defaults nobody overrode, so a
    command can say where a value nobody typed came from."""
    given = {**(load_yaml(yaml_path) if yaml_path else {}), **cli}
    own = defaults_of(given.get("task", RunConfig.task)) if defaults_of is not None else {}
    taken = {k: v for k, v in own.items() if k not in given}
    return {**taken, **given}, taken


def build_config(cli: dict[str, Any], yaml_path: str | None = None,
                 defaults_of: Callable[[str], dict[str, Any]] | None = None) -> RunConfig:
    """Merge (:func:`merge_options`), then validate."""
    return RunConfig(**merge_options(cli, yaml_path, defaults_of)[0]).validate()

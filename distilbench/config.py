"""Typed run configuration. Precedence, in one place: CLI flag > YAML file (``--config``) > the defaults below.

Every field carries its help text; ``validate`` raises :class:`UsageError` (a ``ValueError``) with a message
that names the bad value and what is accepted, never ``assert``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    task: str = _f("rte", "GLUE task name (see `distilbench ls tasks`).")
    objective: str = _f("kd", "distillation objective (see `distilbench ls objectives`); `none` = plain fine-tuning.")
    teacher: str = _f("mpnet-base", "teacher: an embedded alias (mpnet-base, minilm-l6), a hub id or a local path.")
    student: str | None = _f(None, "student model: alias, hub id or path; shorthand for --init pretrained:MODEL.")
    init: str = _f("first-k", "student initialisation: layers:1,2,3 | every-k | first-k | last-k | random | pretrained:MODEL.")
    student_layers: int = _f(3, "number of student layers for every-k / first-k / last-k / random.")
    seeds: int = _f(1, "run seeds 0..N-1 (paired: seed k gives every objective the same data order and init).")
    seed_list: str | None = _f(None, "comma-separated explicit seeds, instead of --seeds.")
    epochs: float = _f(3.0, "student training epochs.")
    lr: float = _f(5e-5, "student peak learning rate (AdamW, linear warm-up and decay).")
    batch_size: int = _f(16, "training batch size.")
    eval_batch_size: int = _f(64, "evaluation batch size.")
    max_length: int = _f(128, "maximum tokens per example (dynamic padding below it).")
    warmup_ratio: float = _f(0.1, "share of training steps for linear warm-up.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off).")
    layer_map: str = _f("init", "which teacher layer each student layer learns from: init | uniform | last | ted | 4,8,12.")
    beta: float | None = _f(None, "weight of the intermediate-layer term(s) of layer objectives (joint schedule); default: the objective's own (1.0; TED 100).")
    schedule: str = _f("joint", "layer objectives: joint (CE + KD + beta*intermediate) | sequential (intermediate, then prediction layer; --epochs each, paper 002).")
    ted_filter: str = _f("linear", "TED filter architecture (paper 001 §6.5): linear | mlp (two layers, GeLU) | layer (init from the model's next layer).")
    ted_student_filters: str = _f("copy", "TED student filters: copy (the trained teacher filter at M(k), A.4 case 2.2) | train (Stage I on the frozen student) | random (Table 6 ablation).")
    ted_teacher_filters: str = _f("trained", "TED teacher filters: trained (Stage I) | random (untrained, Table 6 ablation) | none (no filters: LWD).")
    ted_finetune_student: bool = _f(False, "TED: fine-tune the student on the task (--epochs, CE) before training its filters in Stage I (A.2.3; implies --ted-student-filters train, per seed).")
    ted_filter_epochs: float = _f(1.0, "TED Stage I epochs (filters only, model frozen; paper 001 §5.2 trains one epoch).")
    ted_filter_lr: float = _f(1e-3, "TED Stage I learning rate (filters start random; the model is frozen).")
    teachers: str | None = _f(None, "multi-teacher objectives (autoskd, skd, avgkd): the team, comma-separated aliases, ids or paths; NAME@INIT is a truncated fine-tuned teacher, e.g. mpnet-base@first-3 (the student's own architecture, a weak teacher).")
    theta_update: str = _f("sswo", "autoskd: how theta learns: sswo (only the sampled teacher's weight, paper 003 Eq. 7) | cr (continuous relaxation, Eq. 5).")
    theta_lr: float = _f(3e-4, "autoskd: Adam learning rate of theta (weight decay 1e-3; the paper's range 3e-4 .. 1e-3).")
    theta_init: str = _f("uniform", "skd: the fixed distribution: uniform | random (drawn from the seed; the paper's random baseline) | weights like 0.5,0.3,0.2.")
    autoskd_m: int | None = _f(None, "autoskd: teachers discarded between the phases (Eq. 8); default: those no larger than the student (Appendix A.1's rule of thumb).")
    candidates: int = _f(2, "autoskd: candidate distributions from phase 2, each retrained from scratch, best on the selection split (the paper used 25).")
    autoskd_lookahead: str = _f("finite-difference", "autoskd: theta's look-ahead gradient: finite-difference (DARTS) | exact (second order) | first-order.")
    teacher_cache: str = _f("fp32", "teacher-output cache (hidden states, attention scores, values of the mapped layers; computed once, memory-mapped): fp32 | fp16 | off (run the teacher every step).")
    temperature: float = _f(2.0, "softmax temperature of the prediction-layer (KD) term.")
    alpha_kd: float = _f(1.0, "weight of the prediction-layer KD term: loss = CE + alpha_kd * T^2 * KL.")
    teacher_epochs: float = _f(3.0, "teacher fine-tuning epochs.")
    teacher_lr: float = _f(3e-5, "teacher fine-tuning learning rate.")
    teacher_seed: int = _f(0, "seed of the (single, cached) teacher fine-tuning run.")
    teacher_micro_batch: int = _f(4, "teacher fine-tuning: run each batch as micro-batches of at most this many examples whose gradients add up to the batch's (the same update in less memory: a base-size teacher's longest batches of 16 peaked at 4.5 GiB whole, 3.8 GiB in parts of 8, 3.1 GiB in parts of 4, which cost ~16%% of its speed); 0 = whole batches.")
    selection_fraction: float = _f(0.1, "seeded held-out slice of train used for every selection (best epoch); dev is never used to select.")
    select_best_epoch: bool = _f(True, "keep the epoch with the best selection-split score.")
    max_train_examples: int | None = _f(None, "subsample train to N examples (fixed, reproducible sample).")
    max_eval_examples: int | None = _f(None, "evaluate on the first N dev examples only (quick looks; not comparable).")
    data_dir: str | None = _f(None, "GLUE_DIR-layout folder (RTE/train.tsv, ...); default $GLUE_DIR, else the nyu-mll/glue hub.")
    results: str = _f("runs/results.sqlite", "results store: an SQLite file, or a PostgreSQL URL (postgresql+psycopg2://USER@HOST:PORT/DB) that processes on several machines share, dividing the runs between them.")
    force: bool = _f(False, "rerun and replace rows that already exist.")
    baseline: bool = _f(True, "also run the `none` baseline (same student, no teacher) for the table.")
    cpu: bool = _f(False, "force the CPU even when an accelerator is present.")
    mixed_precision: str = _f("auto", "auto (bf16 on CUDA, none on CPU) | no | bf16 | fp16.")
    progress: bool = _f(True, "show a progress bar.")
    workers: str = _f(os.environ.get("DISTILBENCH_WORKERS", "auto"), "run independent (objective, seed) runs in N processes with the cores shared out among them, "
                           "or auto (CPU: one single-thread process per core, measured 1.18x faster than one 2-thread process "
                           "on 2 cores; an accelerator: 1). Teachers, caches and TED's Stage I are built first, once. "
                           "Default: $DISTILBENCH_WORKERS, else auto.")

    def validate(self) -> "RunConfig":
        positive = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "max_length": self.max_length, "temperature": self.temperature, "teacher_epochs": self.teacher_epochs,
                    "teacher_lr": self.teacher_lr, "student_layers": self.student_layers}
        for name, value in positive.items():
            if value is None or value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0 (got {value})")
        if self.seed_list is None and self.seeds < 1:
            raise UsageError(f"--seeds must be >= 1 (got {self.seeds}); use --seeds N for seeds 0..N-1 or --seed-list 0,3,7")
        if self.teacher_micro_batch < 0:
            raise UsageError(f"--teacher-micro-batch must be >= 0 (0 = whole batches; got {self.teacher_micro_batch})")
        if not 0.0 < self.selection_fraction < 1.0:
            raise UsageError(f"--selection-fraction must be in (0, 1) (got {self.selection_fraction})")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UsageError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
        for name, value, accepted in (("ted_filter", self.ted_filter, ("linear", "mlp", "layer")),
                                      ("ted_student_filters", self.ted_student_filters, ("copy", "train", "random")),
                                      ("ted_teacher_filters", self.ted_teacher_filters, ("trained", "random", "none"))):
            if value not in accepted:
                raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(accepted)} (got {value!r})")
        for name, value, accepted in (("theta_update", self.theta_update, ("sswo", "cr")),
                                      ("teacher_cache", self.teacher_cache, ("fp32", "fp16", "off")),
                                      ("autoskd_lookahead", self.autoskd_lookahead, ("finite-difference", "exact", "first-order"))):
            if value not in accepted:
                raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(accepted)} (got {value!r})")
        if self.theta_lr <= 0 or self.candidates < 1:
            raise UsageError(f"--theta-lr must be > 0 and --candidates >= 1 (got {self.theta_lr}, {self.candidates})")
        if self.schedule not in ("joint", "sequential"):
            raise UsageError(f"--schedule must be joint or sequential (got {self.schedule!r})")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise UsageError(f"--mixed-precision must be auto, no, bf16 or fp16 (got {self.mixed_precision!r})")
        if self.student is not None:
            if self.init not in ("first-k", f"pretrained:{self.student}"):  # first-k is the default: --student overrides it
                raise UsageError(f"--student {self.student} conflicts with --init {self.init}; give one of them")
            self.init = f"pretrained:{self.student}"
        from .workers import parse

        self.workers = parse(self.workers)
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


# what a run is (its cell and seeds) or where and how it runs and reports: never "settings" of what it measured
_NOT_SETTINGS = ("task", "objective", "teacher", "student", "init", "seeds", "seed_list", "data_dir", "results", "force",
                 "baseline", "progress", "cpu", "teachers", "workers")


def nondefault_settings(cfg: RunConfig) -> dict[str, Any]:
    """The options of ``cfg`` that differ from the defaults and change what is measured (cut-down data, shorter
    training, other hyper-parameters): what a table title must say about its numbers."""
    out = {}
    for f in dataclasses.fields(RunConfig):
        if f.name not in _NOT_SETTINGS and getattr(cfg, f.name) != f.default:
            out[f.name] = getattr(cfg, f.name)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config is plain data: keys are RunConfig field names (dashes or underscores)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config {path} must be a mapping of option: value")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UsageError(f"config {path}: unknown option {key!r}; accepted: {', '.join(sorted(known))}")
        out[name] = _coerce(name, value, f"config {path}")
    return out


def _coerce(name: str, value: Any, where: str) -> Any:
    """YAML reads `lr: 1e-3` as a string: convert each value to its field's type, or refuse it in one line."""
    kind = typing.get_type_hints(RunConfig)[name]
    base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
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


def build_config(cli: dict[str, Any], yaml_path: str | None = None) -> RunConfig:
    """Merge defaults < YAML < explicitly given CLI flags, then validate."""
    values = load_yaml(yaml_path) if yaml_path else {}
    values.update(cli)
    return RunConfig(**values).validate()


def stable_hash(obj: Any, n: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]

"""`distilbench run`: validate everything, get the teacher, then train each (objective, seed) whose row is missing.

Every input is checked before any training starts or any row is written. Each seed's row is written when that seed
finishes, so a run killed half-way keeps what it finished and the same command completes the rest.
"""
from __future__ import annotations

import dataclasses
import platform
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import __version__
from ..config import RunConfig, nondefault_settings
from ..hashing import run_key, stable_hash
from ..data.batching import Encoded, encode, fingerprint, selection_split, subsample
from ..errors import TrainingDiverged, UsageError
from .harness import SharedStages, TeacherSource, evaluate, make_accelerator, predict, train
from ..data.metrics import compute_metrics
from ..models.inits import InitPlan, build_student, copy_layers, parse_init
from ..models.loading import load_classifier, load_tokenizer, model_config, model_fingerprint, resolve_model
from ..objectives import Context, Needs, Objective, get_objective
from . import cost
from .precision import identity_part, resolve as resolve_precision
from .profile import model_profile, row_profile
from ..results.store import ResultsStore
from ..data.tasks import Example, Task, get_task, load_split, resolve_data_dir
from .teacher_cache import open_or_build, parts_for
from .teacher import TeacherRecord, ensure_teacher, teacher_cached, load_teacher, logits_path, record_dev_metrics, split_for_teacher, teacher_logits

STORED, DONE, HELD = "stored", "done", "held"  # what run_and_store did with one run


@lru_cache(maxsize=1)
def git_revision() -> str:
    """HEAD of the checkout the package runs from, with ``-dirty`` when tracked files differ from it: a revision that
    does not reproduce a result must say so. ``unknown`` for an installed wheel."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if not head:
            return "unknown"
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    import accelerate
    import transformers
    return {"distilbench": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


@dataclass
class Plan:
    """Everything a run needs, resolved and validated before anything is trained or written."""

    cfg: RunConfig
    task: Task
    objectives: list[type[Objective]]
    init: InitPlan
    teacher_layers: int
    train_all: list[Example]
    dev: list[Example]
    train_rows: int
    store: ResultsStore
    seeds: list[int]
    pairs: list[tuple[int, int]]
    team: list[str]  # multi-teacher objectives: canonical member names (NAME or NAME@layers:...)


def plan_run(cfg: RunConfig, read_dev: bool = True) -> Plan:
    """Resolve and validate a run. ``read_dev=False`` (a search) never opens the dev file: ``Plan.dev`` is None."""
    task = get_task(cfg.task)
    main = get_objective(cfg.objective)
    objectives = [main] + ([get_objective("none")] if cfg.baseline and main.name != "none" else [])
    data_dir = resolve_data_dir(cfg.data_dir)
    train_file = load_split(task, "train", data_dir)
    dev = load_split(task, "dev", data_dir)[: cfg.max_eval_examples] if read_dev else None

    teacher_config = model_config(cfg.teacher)
    init = parse_init(cfg.init, teacher_config.num_hidden_layers, cfg.student_layers)
    if init.pretrained is not None:
        resolve_model(init.pretrained)  # a missing or mistyped student fails now, not after the teacher is trained
        if any(o.needs.token_aligned for o in objectives) and not same_vocabulary(cfg.teacher, init.pretrained):
            raise UsageError(f"objective {main.name} compares token positions, but teacher {cfg.teacher} and student "
                             f"{init.pretrained} have different vocabularies; use a student initialised from the teacher's "
                             f"layers, or an objective that needs no token alignment (kd, hid-cls)")
    student_layers = (model_config(init.pretrained).num_hidden_layers
                      if init.pretrained else init.num_layers)
    pairs = distillation_pairs(cfg.layer_map, init, student_layers, teacher_config.num_hidden_layers)
    team = plan_team(cfg, main, task)
    train_all = subsample(train_file, cfg.max_train_examples)
    if not selection_split(train_all, cfg.selection_fraction, 0)[0]:  # its size does not depend on the seed
        raise UsageError(f"{len(train_all)} training example(s) leave none to train on once --selection-fraction "
                         f"{cfg.selection_fraction} holds out the selection split; give at least 2 (--max-train-examples) "
                         f"or a smaller --selection-fraction")
    store = ResultsStore(cfg.results)  # an unwritable path fails here, before any training
    return Plan(cfg, task, objectives, init, teacher_config.num_hidden_layers, train_all,
                dev, len(train_file), store, cfg.seed_values(), pairs, team)


def plan_team(cfg: RunConfig, objective: type[Objective], task: Task) -> list[str]:
    """The teacher team of a multi-teacher objective, each member resolved now; ``NAME@INIT`` (a truncated teacher:
    INIT's layers of NAME's pretrained weights, then fine-tuned) is written canonically (``mpnet-base@layers:1,2,3``)
    so that its cache key does not depend on other flags."""

    if not objective.multi_teacher:
        if cfg.teachers:
            raise UsageError(f"--teachers is for multi-teacher objectives (autoskd, skd, avgkd); {objective.name} learns from --teacher")
        return []
    if task.regression:
        raise UsageError(f"{objective.name} distils class distributions; {task.name} is a regression task: use a classification task")
    team = [t.strip() for t in (cfg.teachers or "").split(",") if t.strip()]
    if len(team) < 2:
        raise UsageError(f"{objective.name} needs a team of at least two teachers, e.g. --teachers mpnet-base,minilm-l6,mpnet-base@first-k "
                         f"(got {cfg.teachers!r})")
    members = []
    for member in team:
        base, _, init = member.partition("@")
        layers = model_config(base).num_hidden_layers
        if init:
            spec = parse_init(init, layers, cfg.student_layers)
            if spec.layers is None:
                raise UsageError(f"--teachers {member}: NAME@INIT takes a layer-copying init (layers:1,2,3, first-k, every-k, last-k), not {init}")
            member = f"{base}@{spec.spec}"
        members.append(member)
    if len(set(members)) != len(members):
        raise UsageError(f"--teachers names the same teacher twice: {', '.join(members)}")
    return members


def same_vocabulary(a: str, b: str) -> bool:
    return load_tokenizer(a).get_vocab() == load_tokenizer(b).get_vocab()


def distillation_pairs(spec: str, init: InitPlan, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Which teacher layer each student layer learns from (1-based pairs).

    ``init`` (default): the teacher layers the student was initialised from, as paper 002 does (uniform when the
    student was not copied from the teacher); ``uniform``: student layer k <- teacher layer round(k * L_t / L_s);
    ``last``: only the last student layer <- the last teacher layer; ``ted``: TED's M(k) = 2k-1 for k <= K/2, else 2k
    (paper 001 §5.3); or an explicit list of teacher layers, one per student layer ("4,8,12").
    """
    if spec == "init" and init.layers is not None:
        return list(enumerate(init.layers, start=1))
    if spec in ("init", "uniform"):
        return [(k, round(k * teacher_layers / student_layers)) for k in range(1, student_layers + 1)]
    if spec == "last":
        return [(student_layers, teacher_layers)]
    if spec == "ted":
        pairs = [(k, 2 * k - 1 if k <= student_layers // 2 else 2 * k) for k in range(1, student_layers + 1)]
        if pairs[-1][1] > teacher_layers:
            raise UsageError(f"--layer-map ted needs a teacher of at least {pairs[-1][1]} layers (M(k) = 2k-1 / 2k); it has {teacher_layers}")
        return pairs
    try:
        layers = [int(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"--layer-map must be init, uniform, last, ted or a list of teacher layers like 4,8,12 (got {spec!r})") from None
    if len(layers) != student_layers:
        raise UsageError(f"--layer-map {spec} names {len(layers)} teacher layers for a student of {student_layers} layers")
    bad = [t for t in layers if not 1 <= t <= teacher_layers]
    if bad:
        raise UsageError(f"--layer-map: teacher layer {bad[0]} is out of range: the teacher has layers 1..{teacher_layers}")
    return list(enumerate(layers, start=1))


def student_name(cfg: RunConfig, init: InitPlan) -> str:
    return init.pretrained if init.pretrained else f"{cfg.teacher}[{init.spec}]"


def run_identity(plan: Plan, objective: type[Objective], teacher: TeacherRecord, seed: int,
                 team: list[TeacherRecord] | None = None, precision: str = "fp32") -> dict[str, Any]:
    cfg = plan.cfg
    return {"task": plan.task.name, "task_version": plan.task.version, "objective": objective.name,
            "objective_version": objective.version, "objective_params": objective.param_values(cfg),
            "init": plan.init.spec, "student": student_name(cfg, plan.init),
            "student_weights": model_fingerprint(plan.init.pretrained) if plan.init.pretrained else None,
            "teacher": cfg.teacher, "teacher_key": teacher.key,
            "hparams": {k: getattr(cfg, k) for k in ("epochs", "lr", "batch_size", "max_length", "warmup_ratio", "weight_decay",
                                                      "max_grad_norm", "selection_fraction", "select_best_epoch", "max_train_examples")},
            **({"teacher_cache": "fp16"} if cfg.teacher_cache == "fp16" else {}),  # fp16 teacher outputs change results
            "dev": fingerprint(plan.dev), "seed": seed,
            **({"team": [r.key for r in team]} if team else {}),
            # bf16 changes results, so it makes another cell (never paired with fp32); absent for fp32, the precision
            # of every row stored before it was recorded, so their keys hold
            **identity_part(precision)}


def run_settings(cfg: RunConfig, precision: str) -> dict[str, Any]:
    """What a row's table titles and report headers must say about its numbers: the non-default settings, and the
    precision when it is not fp32."""
    return {**nondefault_settings(cfg), **identity_part(precision)}


class Runner:
    def __init__(self, cfg: RunConfig, console: Console | None = None, read_dev: bool = True, precision: str | None = None):
        self.started = time.perf_counter()
        # seconds spent per phase of run(), for the closing breakdown (see time_breakdown)
        self.timings = {"teacher": 0.0, "caches": 0.0, "Stage I": 0.0, "students": 0.0}
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.plan = plan_run(cfg, read_dev)
        # resolved once per run; worker processes are handed the parent's (their thread count differs, and a probe
        # there could decide otherwise)
        self.precision, why = (precision, "the parent process's") if precision else resolve_precision(cfg.mixed_precision, cfg.cpu)
        self.accelerator = make_accelerator(cfg, self.precision)
        if self.precision != "fp32" or "probe" in why:  # fp32 without a probe is the plain case: no line
            self.log(f"precision: {self.precision} ({why})")
        self.tokenizer = load_tokenizer(cfg.teacher)
        self.team_records: list[TeacherRecord] = []
        self.team: list[tuple] = []  # (record, loaded model, tokenizer) per member, see prepare_team
        self._encoded: dict[tuple, Encoded] = {}

    prefix = ""  # a worker process's tag on its lines ("w1: ")
    lost: list[str] = []  # runs lost with a worker process that died (--workers): a rerun trains them
    held: list[tuple] = []  # (objective, seed) runs another worker was training, left by run(wait=False)

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:  # soft_wrap: a long path stays one line (the terminal wraps it, not rich)
            self.console.print(self.prefix + message, soft_wrap=True)

    # -- progress -------------------------------------------------------------------------------------------------
    def _progress(self, label: str, named_stages: bool = False):
        """A live bar (a terminal) or a line every 10% (a log), per stage; ``named_stages``: each stage's bar and lines
        say which stage they count (TED: "Stage I (filters)", then "Stage II (distil)"), since each starts at step 1."""
        if not self.cfg.progress or not self.accelerator.is_main_process:
            return None, None

        def stage_label(stage) -> str:
            if not named_stages or stage is None:
                return label
            return f"{label}, {stage.title} ({stage.name})" if stage.title else f"{label}, {stage.name}"

        if not self.console.is_terminal:  # a log file or CI: a plain line every 10% instead of a live bar
            marks: set[tuple[str, int]] = set()

            def log_line(step, total, terms, speed, stage=None):
                name = stage_label(stage)
                mark = 10 * step // total
                if (name, mark) not in marks and (step == total or mark > 0):
                    marks.add((name, mark))
                    info = " ".join(f"{k}={v:.4f}" for k, v in terms.items())
                    self.console.print(f"{name}: step {step}/{total} {info} {speed:.1f} ex/s", soft_wrap=True)

            return None, log_line
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console, transient=False)
        handles: dict[str, int] = {}

        def update(step, total, terms, speed, stage=None):
            name = stage_label(stage)
            if name not in handles:  # a new stage gets its own bar; the finished one stays on screen
                handles[name] = bar.add_task(name, total=None, info="")
            info = " ".join(f"{k}={v:.4f}" for k, v in terms.items()) + f" {speed:.1f} ex/s"
            bar.update(handles[name], completed=step, total=total, info=info)

        return bar, update

    def _train(self, model, objective, teacher, train_enc, select_enc, seed, epochs, lr, label, teacher_train_enc=None, shared=None,
               micro_batch=0, only_shared=False):
        stages = objective.stages()
        bar, update = self._progress(label, len(stages) > 1 or any(s.title for s in stages))
        if bar:
            bar.start()
        try:
            result = train(model, objective, teacher, train_enc, select_enc, self.plan.task, self.cfg, seed, self.accelerator,
                           epochs, lr, update, teacher_train_enc, shared, micro_batch, only_shared=only_shared)
        finally:
            if bar:
                bar.stop()
        if shared is not None:  # shared stages trained here (not read from their cache) count as "Stage I", not students
            self.timings["Stage I"] += sum(result.stage_times.get(s.name, 0.0) for s in stages if s.shared)
        for entry in result.history:
            if "cached" in entry:
                stage = next((s for s in stages if s.name == entry["stage"]), None)
                self.log(f"{label}: {stage.title + ' ' if stage and stage.title else ''}({entry['stage']}) "
                         f"read from its cache {entry['cached']}")
        return result

    # -- teacher --------------------------------------------------------------------------------------------------
    def _fine_tune_teacher(self, model_name: str, train_all: list[Example]):
        task, cfg = self.plan.task, self.cfg
        train_part, select_part = split_for_teacher(cfg, train_all)
        base, _, init = model_name.partition("@")
        tokenizer = load_tokenizer(base)
        torch.manual_seed(cfg.teacher_seed)  # the new task head is random: the teacher seed fixes it
        net = load_classifier(base, task.num_labels, task.regression, attn_implementation=None)
        if init:  # a truncated teacher: those layers of the pretrained model, then fine-tuned like any teacher
            net, mapping = copy_layers(net, parse_init(init, net.config.num_hidden_layers, cfg.student_layers).layers, cfg.teacher_seed)
            for line in mapping:
                self.log(f"  {model_name}: {line}")
        none = get_objective("none")(Context(task, cfg, [], net.config.hidden_size, None))
        result = self._train(net, none, None, encode(tokenizer, train_part, cfg.max_length),
                             encode(tokenizer, select_part, cfg.max_length), cfg.teacher_seed, cfg.teacher_epochs,
                             cfg.teacher_lr, f"teacher {model_name}", micro_batch=cfg.teacher_micro_batch)
        return net, tokenizer, {"best_epoch": result.best_epoch, "select_score": result.best_select_score,
                                "history": result.history, "examples_per_s": result.examples_per_s}

    def teacher(self, name: str | None = None) -> TeacherRecord:
        cfg, task = self.cfg, self.plan.task
        name = name or cfg.teacher
        if self.accelerator.num_processes > 1 and not teacher_cached(cfg, name, task, self.plan.train_all, self.precision):
            raise UsageError(f"teacher {name} is not fine-tuned for {task.name} yet: under accelerate launch, fine-tune it first in "
                             f"one process (`distilbench teacher --task {task.name} --model {name}` with the same options)")
        record = ensure_teacher(cfg, name, task, self.plan.train_all, self._fine_tune_teacher, self.log, self.precision)
        if self.plan.dev is None:  # a search: dev stays unread; the teacher's own selection score is what is known
            self.log(f"teacher {name} on {task.name}: selection {task.main_score} = {100 * record.meta['select_score']:.2f}")
            return record
        dev_fp = fingerprint(self.plan.dev)
        if record.dev_metrics(dev_fp) is None:
            net = load_teacher(record, task)
            metrics = evaluate(net, encode(load_tokenizer(str(record.path)), self.plan.dev, cfg.max_length), task, cfg, self.accelerator)
            record_dev_metrics(record, dev_fp, metrics)
        metrics = record.dev_metrics(dev_fp)
        majority = task.majority_score([e.label for e in self.plan.dev])
        self.log(f"teacher {name} on {task.name} dev: {task.main_score} = {100 * metrics['score']:.2f}"
                 + (f" (majority class {100 * majority:.2f})" if majority is not None else ""))
        if majority is not None and metrics["score"] - majority < 0.02:
            self.log(f"[bold red]WARNING: the teacher is within 2 points of the majority-class score on {task.name} dev "
                     f"({100 * metrics['score']:.2f} vs {100 * majority:.2f}): distilling from it means nothing. "
                     f"Give the teacher more data or epochs (--teacher-epochs), a stronger model (--teacher), or pick another task.[/]")
        record.meta["majority"] = majority
        return record

    # -- students -------------------------------------------------------------------------------------------------
    def pending(self) -> tuple[TeacherRecord, list[tuple]]:
        """The teacher (fine-tuned or from the cache), the team, and the (objective, seed) runs not stored yet."""
        plan, cfg = self.plan, self.cfg
        record = self.teacher()
        team = self.prepare_team()
        todo = []
        for objective in plan.objectives:
            for seed in plan.seeds:
                key = run_key(self.identity(objective, record, seed, team))
                if cfg.force or not plan.store.has(key):
                    todo.append((objective, seed))
        done = len(plan.objectives) * len(plan.seeds) - len(todo)
        if done:
            self.log(f"{done} run(s) already stored in {plan.store.location}, skipped")
        return record, todo

    def identity(self, objective, record, seed, team=None) -> dict:
        team = self.team_records if team is None else team
        return run_identity(self.plan, objective, record, seed, team if objective.multi_teacher else None,
                            self.precision)

    def teacher_net(self, record: TeacherRecord):
        return load_teacher(record, self.plan.task)

    def jobs(self, todo: list[tuple], record: TeacherRecord, teacher_net) -> list:
        """Workers' jobs for ``todo``, after building what the runs share (caches, shared stages) here, once."""
        from .workers import Job

        for objective in dict.fromkeys(o for o, _ in todo):
            self.prepare(objective, record, teacher_net)
        values = dataclasses.asdict(self.cfg)
        return [Job(values, self.plan.objectives.index(o), seed, f"{self.plan.task.name}/{o.name} seed {seed}", self.precision)
                for o, seed in todo]

    def run_label(self, objective, seed: int) -> str:
        return f"{self.plan.task.name}/{objective.name}/{self.plan.init.spec} seed {seed}"

    def run_and_store(self, objective, seed, record, teacher_net, prefix: str = "", quiet: bool = False) -> str:
        """Train one seed of one objective and write its row, under a lease (:mod:`distilbench.results.leases`) so that
        processes sharing the store never train it twice. Returns ``STORED``, ``DONE`` (its row exists) or ``HELD``
        (another live worker is training it: skipped; said unless ``quiet``)."""
        identity = self.identity(objective, record, seed)
        key = run_key(identity)
        store, label = self.plan.store, self.run_label(objective, seed)
        if not self.cfg.force and store.has(key):
            return DONE
        if prefix:
            self.prefix = prefix
        # under accelerate launch every process trains the same run together: there is nothing to divide
        leased = self.accelerator.num_processes == 1
        if leased:
            claim = store.claim(key, label)
            if not claim.claimed:
                if not quiet:
                    self.log(f"{label}: another worker ({claim.holder}) is training it; skipped for now")
                return HELD
            if claim.previous is not None:
                self.log(f"{label}: taking it over from {claim.previous.holder}, whose lease ran out or who died")
            if not self.cfg.force and store.has(key):  # its holder finished it between our check and our claim
                store.release(key)
                return DONE
        beat = nullcontext()
        if leased:
            beat = store.heartbeat(key, on_lost=lambda: self.log(
                f"[bold red]{label}: lost its lease to another worker (this one stalled past {store.lease_s:g} s); "
                "training goes on, and the first row written is kept[/]"),
                on_error=lambda exc: self.log(f"{label}: lease renewal failed ({type(exc).__name__}); retried at the next beat"))
        try:
            with beat:
                row = self.run_one(objective, seed, identity, key, record, teacher_net)
                if self.accelerator.is_main_process:
                    row["extra"]["worker"] = store.holder  # who trained it, for the record
                    store.put(row, replace=self.cfg.force)  # ends the lease in the same transaction
        except BaseException:
            if leased:  # a failed or interrupted run: free it at once for the next worker or a rerun
                try:
                    store.release(key)
                except Exception:  # noqa: BLE001 - the run's own error is the one to report; the lease expires
                    pass
            raise
        return STORED

    def finish_held(self, held: list[tuple], record: TeacherRecord, teacher_net) -> None:
        """Wait for the runs other workers hold, so that this process's table and report include them: each one is
        either stored by its holder, or its lease runs out (the holder died) and it is trained here. Says which runs
        it waits for, and who holds them."""
        store = self.plan.store
        said = None
        while held:
            held = [(o, s) for o, s in held if self.run_and_store(o, s, record, teacher_net, quiet=True) == HELD]
            if not held:
                break
            holders = {lease.label: lease.holder for lease in store.live_leases()}
            labels = [self.run_label(o, s) for o, s in held]
            message = (f"waiting for {len(held)} run(s) that other workers are training: "
                       + "; ".join(f"{lb} ({holders.get(lb, 'finishing')})" for lb in labels))
            if message != said:
                self.log(message)
                said = message
            time.sleep(min(5.0, store.lease_s / 4))

    def rows(self, record: TeacherRecord) -> list[dict]:
        plan = self.plan
        rows = [plan.store.get(run_key(self.identity(o, record, s))) for o in plan.objectives for s in plan.seeds]
        return [r for r in rows if r is not None]

    def run(self, wait: bool = True) -> list[dict]:
        """Train every pending run and return the stored rows. Runs another worker holds are skipped; with ``wait``
        this process then waits for them (:meth:`finish_held`), else they are left in ``self.held``."""
        from .workers import resolve, run_jobs

        plan, cfg = self.plan, self.cfg
        start = time.perf_counter()
        record, todo = self.pending()
        self.held = []
        if todo:
            self.log(f"{len(todo)} run(s) to train")
            teacher_net = self.teacher_net(record)
        self.timings["teacher"] += time.perf_counter() - start
        start, before = time.perf_counter(), self.timings["caches"] + self.timings["Stage I"]
        if todo:
            processes, threads = resolve(cfg.workers, len(todo), self.accelerator.device.type != "cpu")
            pooled = processes > 1 and self.accelerator.num_processes == 1
            self.profile_models(record, teacher_net, threads if pooled else torch.get_num_threads())
            if pooled:
                jobs = self.jobs(todo, record, teacher_net)
                outcome = run_jobs(jobs, processes, threads, self.log)
                if outcome["diverged"]:
                    raise TrainingDiverged("; ".join(outcome["diverged"]))
                if outcome["failed"]:
                    raise RuntimeError("worker run(s) failed: " + "; ".join(outcome["failed"]))
                self.lost = outcome["lost"]
                self.held = [(plan.objectives[jobs[k].objective], jobs[k].seed) for k in outcome["held"]]
            else:
                for objective, seed in todo:
                    if self.run_and_store(objective, seed, record, teacher_net) == HELD:
                        self.held.append((objective, seed))
            if self.held and wait:
                self.finish_held(self.held, record, teacher_net)
                self.held = []
        # the caches and Stage I were built inside this span (on the first seed, or before the workers started)
        self.timings["students"] += time.perf_counter() - start - (self.timings["caches"] + self.timings["Stage I"] - before)
        rows = self.rows(record)
        if cfg.save_students and not cfg.force:
            from .export import note_unsaved

            note_unsaved(rows, self.log)
        plan.store.close()  # a suite runs many Runners: release each one's connection
        return rows

    def profile_models(self, record: TeacherRecord, teacher_net=None, threads: int | None = None) -> None:
        """Size and speed of the teacher and of the student's architecture with ``threads`` CPU threads (the runs'),
        measured here once per machine and cached (distilbench.training.profile): before worker processes start, since a
        latency timed beside training workers would measure their contention; the runs read the cache."""
        if not self.accelerator.is_main_process:
            return
        plan = self.plan
        threads = threads or torch.get_num_threads()
        teacher_net = teacher_net if teacher_net is not None else self.teacher_net(record)
        student, _ = self._new_student(plan.seeds[0], teacher_net)
        found = self._profiles(student, teacher_net, threads)
        if None not in found:
            self.log(f"size and speed (batch 1 on the cpu, {threads} thread(s)): " + ", ".join(
                f"{who} {p['params'] / 1e6:.2f}M params, {p['latency']['cpu']['b1']['ms']:.1f} ms"
                for who, p in zip(("student", "teacher"), found)))

    def _profiles(self, student, teacher_net, threads: int) -> list:
        """[student's, teacher's] size and speed (distilbench.training.profile); [None, None] when measuring fails: a finished
        run is never lost to its measurement, its row then reads n/a there."""
        try:
            return [model_profile(student, threads), model_profile(teacher_net, threads)]
        except Exception as exc:  # noqa: BLE001 - out of memory on a GPU, an unwritable cache, ...
            self.log(f"[bold red]size and speed not measured: {type(exc).__name__}: {exc}[/]")
            return [None, None]

    def prepare_team(self) -> list[TeacherRecord]:
        """A multi-teacher objective's team: every member fine-tuned (or reused) and scored, then loaded once with its
        own tokenizer for every seed that follows."""
        self.team_records = [self.teacher(name) for name in self.plan.team]
        self.team = [(r, load_teacher(r, self.plan.task), load_tokenizer(str(r.path))) for r in self.team_records]
        return self.team_records

    def _new_student(self, seed, teacher_net):
        """Seed ``seed``'s student built from its init, and the layer mapping it was copied with."""
        task = self.plan.task
        return build_student(self.plan.init, teacher_net, seed,
                             lambda name: load_classifier(name, task.num_labels, task.regression, attn_implementation=None))

    def _build(self, objective_cls, seed, teacher_net, log: bool = True):
        """Seed ``seed``'s student (built from its init), its tokenizer, and the objective instance for it."""
        plan, cfg, task = self.plan, self.cfg, self.plan.task
        student, mapping = self._new_student(seed, teacher_net)
        tokenizer = load_tokenizer(plan.init.pretrained) if plan.init.pretrained else self.tokenizer
        if log:
            for line in mapping:
                self.log(f"  init: {line}")
        multi = objective_cls.multi_teacher
        team_nets = [net for _, net, _ in self.team] if multi else []
        team_info = [{"name": r.name, "params": sum(p.numel() for p in net.parameters()),
                      "select_score": r.meta.get("select_score")}
                     for r, net, _ in self.team] if multi else []
        objective = objective_cls(Context(task, cfg, plan.pairs, student.config.hidden_size, teacher_net.config.hidden_size,
                                          num_teachers=max(1, len(team_nets)),
                                          student_heads=student.config.num_attention_heads,
                                          teacher_heads=teacher_net.config.num_attention_heads, teacher_model=teacher_net,
                                          seed=seed, team=team_info, student_params=sum(p.numel() for p in student.parameters())))
        return student, tokenizer, objective, mapping, multi

    def _teacher_source(self, objective, record, teacher_net, own_tokens: bool, multi: bool, parts: list | None = None):
        """What the objective reads from its teacher(s): cached outputs where they cover it (built here, once, on
        first use), else the live teacher. ``parts``: gets the shared parts read (their cost: distilbench.training.cost)."""
        start = time.perf_counter()
        try:
            return self._teacher_source_uncounted(objective, record, teacher_net, own_tokens, multi, parts)
        finally:
            self.timings["caches"] += time.perf_counter() - start

    def _teacher_source_uncounted(self, objective, record, teacher_net, own_tokens: bool, multi: bool, parts: list | None):
        plan, cfg = self.plan, self.cfg
        parts = [] if parts is None else parts
        if multi:  # logits only: each member's logits over the whole train file, computed once on its own tokenisation
            caches = [teacher_logits(r, self._encode(tok, plan.train_all), plan.train_rows,
                                     lambda enc, net=net: self._logits(net, enc), f"{r.key}:{cfg.max_length}", self.precision)
                      for r, net, tok in self.team]
            for r, _, tok in self.team:
                parts += [cost.teacher_part(r), cost.logits_part(r, logits_path(r, self._encode(tok, plan.train_all), plan.train_rows,
                                                                                 f"{r.key}:{cfg.max_length}", self.precision))]
            return TeacherSource([net for _, net, _ in self.team], objective.needs, caches)
        if not objective.uses_teacher:
            return None
        cache = outputs = None
        layers = sorted({t for _, t in plan.pairs})
        logits_only = objective.needs == Needs(logits=True, token_aligned=objective.needs.token_aligned)
        if cfg.teacher_cache != "off" and (logits_only or objective.teacher_cache):
            # a frozen teacher's outputs never change: computed once (logits; and the mapped layers' hidden states,
            # scores, values) and read from disk by every epoch, seed and objective; the teacher does not run
            # the teacher's key names its weights and tokenizer; hashing its folder would also hash the caches kept there
            tokenisation = f"{record.key}:{cfg.max_length}"
            enc_all = self._encode(self.tokenizer, plan.train_all)
            cache = [teacher_logits(record, enc_all, plan.train_rows, lambda enc: self._logits(teacher_net, enc), tokenisation,
                                    self.precision)]
            parts.append(cost.logits_part(record, logits_path(record, enc_all, plan.train_rows, tokenisation, self.precision)))
            if not logits_only:
                outputs = [open_or_build(record.path, record.key, enc_all, tokenisation, layers, parts_for(objective.needs),
                                         cfg.teacher_cache, lambda b: self._teacher_outputs(teacher_net, b, objective.needs),
                                         teacher_net.config.num_hidden_layers, cfg.eval_batch_size, self.log, self.precision)]
                parts.append(cost.outputs_part(record, outputs[0].folder, outputs[0].build_s))
        return TeacherSource([teacher_net], objective.needs, cache, own_tokens, outputs, layers)

    def _shared(self, objective, record, tokenizer) -> SharedStages | None:
        """Where an objective's shared stages (TED's Stage I) are trained once and kept, or None when it has none."""
        cfg, plan = self.cfg, self.plan
        if not any(stage.shared for stage in objective.stages()):
            return None
        teacher_part = split_for_teacher(cfg, plan.train_all)[0]
        return SharedStages(self._encode(tokenizer, teacher_part), cfg.teacher_seed, record.path / "stages",
                            stable_hash([record.key, fingerprint(teacher_part), plan.init.spec, cfg.max_length, cfg.batch_size]
                                        + ([self.precision] if self.precision != "fp32" else [])))

    def prepare(self, objective_cls, record, teacher_net) -> None:
        """Build, once, what every seed of ``objective_cls`` shares: the teacher-output caches and the shared stages
        (TED's Stage I). Workers started after this only read them (``--workers``)."""
        plan, cfg = self.plan, self.cfg
        seed = plan.seeds[0]
        student, tokenizer, objective, _, multi = self._build(objective_cls, seed, teacher_net, log=False)
        own_tokens = tokenizer.get_vocab() != self.tokenizer.get_vocab() if plan.init.pretrained else False
        teacher = self._teacher_source(objective, record, teacher_net, own_tokens, multi)
        shared = self._shared(objective, record, tokenizer)
        if shared is not None:
            train_part, select_part = selection_split(plan.train_all, cfg.selection_fraction, seed)
            result = self._train(student, objective, teacher, self._encode(tokenizer, train_part), self._encode(tokenizer, select_part),
                                 seed, cfg.epochs, cfg.lr, f"{objective.name} shared stages", None, shared, only_shared=True)
            cost.stage_parts(objective, shared, result, cfg.epochs, cfg.lr, record.path.parent, self.accelerator.is_main_process)

    def fit(self, objective_cls, seed, record, teacher_net):
        """Build seed ``seed``'s student and objective, train them (and an objective's candidates), choosing on the
        selection split only: dev is not touched here (``distilbench search`` calls this alone)."""
        plan, cfg, task = self.plan, self.cfg, self.plan.task
        train_part, select_part = selection_split(plan.train_all, cfg.selection_fraction, seed)
        student, tokenizer, objective, mapping, multi = self._build(objective_cls, seed, teacher_net)
        own_tokens = tokenizer.get_vocab() != self.tokenizer.get_vocab() if plan.init.pretrained else False
        # the teacher's fine-tuning is part of the cost of every run whose student was copied from it or reads it
        parts = [cost.teacher_part(record)] if objective.uses_teacher or multi or plan.init.pretrained is None else []
        teacher = self._teacher_source(objective, record, teacher_net, own_tokens, multi, parts)
        teacher_train_enc = self._encode(self.tokenizer, train_part) if own_tokens and teacher and not teacher.covered(0) else None
        label = f"{objective.name} seed {seed}"
        shared = self._shared(objective, record, tokenizer)
        train_enc, select_enc = self._encode(tokenizer, train_part), self._encode(tokenizer, select_part)
        result = self._train(student, objective, teacher, train_enc, select_enc, seed, cfg.epochs, cfg.lr, label, teacher_train_enc, shared)
        stage_parts, stage_s = cost.stage_parts(objective, shared, result, cfg.epochs, cfg.lr, record.path.parent,
                                                self.accelerator.is_main_process)
        candidates = objective.candidates()
        if candidates:  # retrain a fresh student (same seed, same init) with each; keep the best on the selection split
            self.log(f"{label}: {len(candidates)} candidate(s) to retrain: " + "; ".join(
                "[" + ", ".join(f"{float(x):.3f}" for x in c) + "]" for c in candidates))
            spent, best = result.train_time_s, None
            for k, candidate in enumerate(candidates):
                fresh, _ = self._new_student(seed, teacher_net)
                objective.use_candidate(k, candidate)
                r = self._train(fresh, objective, teacher, train_enc, select_enc, seed, cfg.epochs, cfg.lr,
                                f"{label} candidate {k + 1}/{len(candidates)}", teacher_train_enc, None)
                objective.candidate_done(k, r.best_select_score)
                spent += r.train_time_s
                self.log(f"{label} candidate {k + 1}: selection {task.main_score} = {100 * r.best_select_score:.2f}")
                if best is None or r.best_select_score > best[0]:
                    best = (r.best_select_score, fresh, r)
            _, student, chosen = best
            chosen.history = result.history + chosen.history  # the search's epochs, then the chosen retrain's
            chosen.stage_times = {**{f"search-{k}": v for k, v in result.stage_times.items()}, **chosen.stage_times}
            chosen.train_time_s = spent
            result = chosen
        summary = objective.summary()
        if summary:
            self.log("\n".join(f"{label}: {line}" for line in summary.splitlines()))
        # a shared stage trained here is a shared part, not this run's own time; a teacher in the team is listed once
        spent = {"own_s": result.train_time_s - stage_s, "shared": list({p["id"]: p for p in parts + stage_parts}.values())}
        return student, tokenizer, objective, result, mapping, multi, label, spent

    def run_one(self, objective_cls, seed, identity, key, record, teacher_net) -> dict:
        plan, cfg, task = self.plan, self.cfg, self.plan.task
        student, tokenizer, objective, result, mapping, multi, label, spent = self.fit(objective_cls, seed, record, teacher_net)
        dev_preds = predict(student, self._encode(tokenizer, plan.dev), task, cfg, self.accelerator)
        dev_labels = np.array([e.label for e in plan.dev])
        dev_metrics = compute_metrics(task, dev_preds, dev_labels)
        teacher_metrics = record.dev_metrics(fingerprint(plan.dev))
        if multi:
            teacher_metrics = max((r.dev_metrics(fingerprint(plan.dev)) for r in self.team_records), key=lambda m: m["score"])
        self.log(f"{label}: dev {task.main_score} = {100 * dev_metrics['score']:.2f} (best epoch {result.best_epoch}, "
                 f"{result.examples_per_s:.1f} ex/s)")
        profile = None
        if self.accelerator.is_main_process:  # measured by profile_models before the runs; read from its cache here
            models = self._profiles(student, teacher_net, torch.get_num_threads())
            profile = row_profile(*models, dev_metrics["score"], teacher_metrics["score"], task.higher_is_better, spent)
        row = {"run_key": key, "kind": "student", "task": task.name, "task_version": task.version, "objective": objective.name,
                "objective_version": objective.version, "init": plan.init.spec, "teacher": cfg.teacher,
                "student": identity["student"], "seed": seed, "config_hash": stable_hash({k: v for k, v in identity.items() if k != "seed"}),
                "score": dev_metrics["score"], "teacher_score": teacher_metrics["score"], "metrics": dev_metrics,
                "params": identity, "wall_time_s": result.train_time_s, "examples_per_s": result.examples_per_s,
                "peak_mem_mb": result.peak_mem_mb, "git_rev": git_revision(), "versions": package_versions(),
                "extra": {"layer_mapping": mapping, "best_epoch": result.best_epoch, "history": result.history,
                          "select_score": result.best_select_score, "teacher_key": record.key,
                          "teacher_dev": teacher_metrics, "majority": record.meta.get("majority"),
                          "settings": run_settings(cfg, self.precision),  # what the table titles must say (cut-down data, ...)
                          "precision": self.precision,
                          "device": str(self.accelerator.device), "main_score": task.main_score, "team": plan.team if multi else None,
                          "stage_times_s": result.stage_times, "objective_report": objective.report(),
                          "student_params": sum(p.numel() for p in student.parameters()),
                          # size, speed, retained share and training cost (distilbench.training.profile, distilbench.training.cost)
                          "profile": profile,
                          # per-example dev predictions and labels in dev order: what the per-example paired tests
                          # (McNemar, bootstrap over examples: distilbench.results.per_example) between two runs need
                          "dev_predictions": _per_example(dev_preds, task.regression), "dev_labels": _per_example(dev_labels, task.regression)}}
        if cfg.save_students and self.accelerator.is_main_process:  # here, where the model lives (a worker's process too)
            from .export import save_student

            self.log(f"{label}: student saved to {save_student(student, tokenizer, task.labels, cfg.max_length, row, cfg.save_students)}")
        return row

    def _encode(self, tokenizer, examples: list[Example]) -> Encoded:
        """Tokenisation, cached per (tokenizer, examples, max length) for the life of the runner."""
        key = (tokenizer.name_or_path, len(tokenizer), fingerprint(examples), self.cfg.max_length)
        if key not in self._encoded:
            self._encoded[key] = encode(tokenizer, examples, self.cfg.max_length)
        return self._encoded[key]

    @torch.no_grad()
    def _teacher_outputs(self, net, batch: dict, needs: Needs):
        from .harness import model_outputs

        net.eval().to(self.accelerator.device)
        with self.accelerator.autocast():  # the run's precision, as the live teacher would compute them (fp32: no-op)
            return model_outputs(net, {k: v.to(self.accelerator.device) for k, v in batch.items()}, needs)

    @torch.no_grad()
    def _logits(self, net, enc: Encoded) -> torch.Tensor:
        from .harness import model_outputs
        from ..data.batching import BatchLoader, eval_batches

        net.eval().to(self.accelerator.device)
        batches = eval_batches(enc.lengths(), self.cfg.eval_batch_size)
        out = torch.zeros(len(enc), self.plan.task.num_labels)
        for ids, batch in zip(batches, BatchLoader(enc, batches, self.plan.task.regression)):
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            with self.accelerator.autocast():  # the run's precision (fp32: no-op)
                out[ids] = model_outputs(net, batch, Needs()).logits.float().cpu()
        return out


def _per_example(values, regression: bool) -> list:
    """Class ids as ints; regression scores rounded to 6 digits (JSON stays small, the metrics do not move)."""
    return [round(float(x), 6) for x in values] if regression else [int(x) for x in values]


def settings_text(settings: dict) -> str:
    """``name=value`` of the non-default settings, sorted, for titles ("" when every option is at its default)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def summary_table(rows: list[dict], task: Task, cfg: RunConfig, precision: str = "fp32") -> list:
    """Per-seed dev scores of each objective side by side, mean ± std, the teacher's and the majority class's score,
    and the signal check: an objective not significantly above the majority class is marked "at chance".

    What to print, in order: the table (a short title, never wrapped), then lines (markup strings) for a console to
    print with ``soft_wrap``: the student, teacher and non-default settings, which can be longer than any terminal,
    and the notes."""
    from rich.markup import escape
    from rich.table import Table

    from ..results.chance import MARK, check_rows

    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["objective"], r["seed"]): r for r in rows}
    checks = {o: check_rows([r for r in rows if r["objective"] == o]) for o in objectives}
    cut = settings_text(run_settings(cfg, precision))
    title = f"{task.name} dev {task.main_score} (%)"
    caption = f"student {rows[0]['student'] if rows else '?'}, teacher {cfg.teacher}" + (f"; settings: {cut}" if cut else "")
    table = Table(title=title, min_width=len(title))  # the table at least as wide as its title: no wrapped title
    table.add_column("seed")
    for o in objectives:
        table.add_column(o, justify="right")
    for s in seeds:
        table.add_row(str(s), *[f"{100 * by[(o, s)]['score']:.2f}" if (o, s) in by else "-" for o in objectives])
    stats = []
    for o in objectives:
        scores = np.array([100 * by[(o, s)]["score"] for s in seeds if (o, s) in by])
        stats.append(f"{scores.mean():.2f} ± {scores.std(ddof=1) if len(scores) > 1 else 0.0:.2f}"
                     + (f" ({MARK})" if checks[o].at_chance else ""))
    table.add_row("mean ± std", *stats, end_section=True)
    if rows:
        table.add_row("teacher", *[f"{100 * rows[0]['teacher_score']:.2f}"] * len(objectives))
    majority = next((c.majority for c in checks.values() if c.applies and not np.isnan(c.majority)), None)
    if majority is not None:
        table.add_row("majority class", *[f"{majority:.2f}"] * len(objectives))
    notes = []
    low = [o for o in objectives if checks[o].at_chance]
    if low:
        what = ("every objective is" if len(low) == len(objectives) else ", ".join(low) + (" is" if len(low) == 1 else " are"))
        notes.append(f"[bold red]{MARK}: {what} not significantly above the majority class ({majority:.2f}) on "
                     f"{task.name} dev (one-sided, α = 0.05, over seeds and over dev examples)"
                     + (": no objective can be ranked on this task at this size.[/]" if len(low) == len(objectives)
                        else ": never ranked.[/]"))
    unchecked = [o for o in objectives if checks[o].applies and checks[o].at_chance is None]
    if unchecked:
        notes.append(f"not checked against the majority class: {', '.join(unchecked)} ({checks[unchecked[0]].reason})")
    return [table, escape(caption), *notes]  # "mpnet-base[layers:1,2,3]" is not markup


def time_breakdown(runner: Runner) -> list[str]:
    """The closing lines of `distilbench run`: seconds in each phase. teacher: fine-tuning or reading it (and a team),
    its dev score, loading it; caches: the teacher-output caches (built or opened); Stage I: shared stages trained
    (TED's filters; read from their cache they cost nothing here); students: training, evaluating and storing each
    run, less the two before; total: from the runner's start (reading the data included) to now."""
    total = time.perf_counter() - runner.started
    parts = [*runner.timings.items(), ("total", total)]
    return ["time (s):", *(f"  {name:<9}{seconds:9.1f}" for name, seconds in parts)]

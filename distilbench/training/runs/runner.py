"""`distilbench run`: validate everything, get the teacher, then train each (objective, seed) whose row is missing.

Every input is checked before any training starts or any row is written (:mod:`.plan`). Each seed's row is written
when that seed finishes, so a run killed half-way keeps what it finished and the same command completes the rest.

The :class:`Runner` decides what to train and stores it; it hands down small objects, built from its current
configuration on each use (a search changes ``cfg`` between trials): :class:`.trainer.Trainer` (one training with its
progress display), :class:`.inference.TeacherInference` (the teacher's fine-tuning and forward passes, for the teacher
caches) and :class:`.sources.TeacherSources` (what each objective reads from its teacher). A trained seed becomes a
row in :mod:`.rows`; the lease around it is :mod:`.leasing`.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from rich.console import Console

from ...allocator import release
from ...config import RunConfig
from ...data.batching import fingerprint, selection_split
from ...data.metrics import compute_metrics
from ...errors import TrainingDiverged, UsageError
from ...hashing import run_key
from ...models.inits import build_student
from ...models.loading import load_task_model, load_tokenizer, model_config
from ...models.pooling import model_pooling, set_pooling
from ...objectives import Context
from ..export.students import note_unsaved, save_student
from ..loop.harness import evaluate, predict, train
from ..loop.parallel import make_accelerator
from ..loop.precision import resolve as resolve_precision
from ..loop.trainer import Trainer
from ..teachers import cost
from ..teachers.inference import TeacherInference
from ..teachers.teacher import TeacherRecord, ensure_teacher, load_teacher, record_dev_metrics, teacher_cached
from .candidates import retrain_candidates
from .leasing import DONE, HELD, STORED, train_under_lease, wait_for_held
from .plan import plan_run, run_identity
from .profile import pair_profiles, profile_pair, row_profile
from .rows import FitResult, student_row
from .sources import Encodings, TeacherSources
from .workers import Job, resolve, run_jobs

__all__ = ["DONE", "HELD", "STORED", "FitResult", "Runner"]


class Runner:
    """A sentence task's runner; another family's subclasses it, overriding the "family hook" methods (:mod:`.families`)."""

    def __init__(self, cfg: RunConfig, console: Console | None = None, read_dev: bool = True, precision: str | None = None):
        self.started = time.perf_counter()
        # seconds spent per phase of run(), for the closing breakdown (see distilbench.cli.summary.time_breakdown)
        self.timings = {"teacher": 0.0, "caches": 0.0, "Stage I": 0.0, "students": 0.0}
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.plan = plan_run(cfg, type(self), read_dev)
        # resolved once per run; worker processes are handed the parent's (their thread count differs, and a probe
        # there could decide otherwise)
        self.precision, why = (precision, "the parent process's") if precision else resolve_precision(cfg.mixed_precision, cfg.cpu)
        self.accelerator = make_accelerator(cfg, self.precision)
        serial = [o.name for o in self.plan.objectives if not o.data_parallel]
        if serial and self.accelerator.num_processes > 1:
            raise UsageError(f"objective {serial[0]} keeps state of its own that data-parallel processes would not share: "
                             "run it in one process (--workers runs seeds side by side)")
        if self.precision != "fp32" or "probe" in why:  # fp32 without a probe is the plain case: no line
            self.log(f"precision: {self.precision} ({why})")
        self.tokenizer = self._teacher_tokenizer()
        self.team_records: list[TeacherRecord] = []
        self.team: list[tuple] = []  # (record, loaded model, tokenizer) per member, see prepare_team
        # tokenisations, kept for the life of the runner (extractive QA: windows numbered in the whole train file's)
        self.encodings = self.new_encodings()

    def new_encodings(self):
        """Family hook: the runner's tokenisations, kept for its life."""
        return Encodings()

    @classmethod
    def teacher_config(cls, cfg: RunConfig):
        """Family hook (planning): the teacher's model config."""
        return model_config(cfg.teacher)

    @classmethod
    def check_run(cls, cfg: RunConfig, task, teacher_config, train, dev, objectives) -> None:
        """Family hook (planning): the family's own refusals; a sentence task has none beyond the shared ones."""

    def _teacher_tokenizer(self):
        """The teacher's tokenizer (a causal LM trained from scratch has none before its teacher exists: LMRunner)."""
        return load_tokenizer(self.cfg.teacher)

    prefix = ""  # a worker process's tag on its lines ("w1: ")
    lost: list[str] = []  # runs lost with a worker process that died (--workers): a rerun trains them
    held: list[tuple] = []  # (objective, seed) runs another worker was training, left by run(wait=False)

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:  # soft_wrap: a long path stays one line (the terminal wraps it, not rich)
            self.console.print(self.prefix + message, soft_wrap=True)

    # -- what the runner hands down -------------------------------------------------------------------------------
    def trainer(self) -> Trainer:
        # `train` is looked up here, at each use: tests replace distilbench.training.runs.runner.train to stop or watch training
        return Trainer(self.cfg, self.plan.task, self.accelerator, self.console, self.log, self.timings, train)

    def inference(self) -> TeacherInference:
        return TeacherInference(self.cfg, self.plan.task, self.accelerator, self.trainer(), self.log)

    def sources(self) -> TeacherSources:
        return TeacherSources(self.cfg, self.plan, self.tokenizer, self.encodings, self.inference(), self.precision,
                              self.log, self.team)

    def _encode(self, tokenizer, examples):
        return self.encodings(tokenizer, examples, self.cfg.max_length)

    # -- teacher --------------------------------------------------------------------------------------------------
    def refuse_untrained_teacher(self, name: str, examples) -> None:
        """Data-parallel processes each would fine-tune the teacher (and wait on each other): it must exist first."""
        if self.accelerator.num_processes > 1 and not teacher_cached(self.cfg, name, self.plan.task, examples, self.precision):
            raise UsageError(f"teacher {name} is not fine-tuned for {self.plan.task.name} yet: with several processes, "
                             f"fine-tune it first in one (`distilbench teacher --task {self.plan.task.name} --model {name}` "
                             "with the same options)")

    def ensured_teacher(self, name: str, examples) -> TeacherRecord:
        """Teacher ``name`` fine-tuned on ``examples`` (or read from the cache), refused first where it cannot be."""
        self.refuse_untrained_teacher(name, examples)
        return ensure_teacher(self.cfg, name, self.plan.task, examples, self.inference().fine_tune, self.log, self.precision)

    def teacher(self, name: str | None = None) -> TeacherRecord:
        cfg, task = self.cfg, self.plan.task
        name = name or cfg.teacher
        record = self.ensured_teacher(name, self.plan.teacher_examples)
        if self.plan.dev is None:  # a search: dev stays unread; the teacher's own selection score is what is known
            self.log(f"teacher {name} on {task.name}: selection {task.main_score} = {100 * record.meta['select_score']:.2f}")
            return record
        dev_fp = fingerprint(self.plan.dev)
        if record.dev_metrics(dev_fp) is None:
            net = load_teacher(record, task)
            dev_enc = self.inference().encode(load_tokenizer(str(record.path)), self.plan.dev)
            metrics = evaluate(net, dev_enc, task, cfg, self.accelerator)
            record_dev_metrics(record, dev_fp, metrics)
        metrics = record.dev_metrics(dev_fp)
        majority = self.majority()
        self.log(f"teacher {name} on {task.name} dev: {task.main_score} = {100 * metrics['score']:.2f}"
                 + (f" (majority class {100 * majority:.2f})" if majority is not None else ""))
        if majority is not None and metrics["score"] - majority < 0.02:
            self.log(f"[bold red]WARNING: the teacher is within 2 points of the majority-class score on {task.name} dev "
                     f"({100 * metrics['score']:.2f} vs {100 * majority:.2f}): distilling from it means nothing. "
                     f"Give the teacher more data or epochs (--teacher-epochs), a stronger model (--teacher), or pick another task.[/]")
        record.meta["majority"] = majority
        return record

    def majority(self) -> float | None:
        """Family hook: dev's majority-class score, the floor the teacher is warned against (None: no such floor)."""
        return self.plan.task.majority_score([e.label for e in self.plan.dev])

    # -- the runs -------------------------------------------------------------------------------------------------
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
                            self.precision, self.accelerator.num_processes)

    def teacher_net(self, record: TeacherRecord):
        return load_teacher(record, self.plan.task)

    def jobs(self, todo: list[tuple], record: TeacherRecord, teacher_net) -> list:
        """Workers' jobs for ``todo``, after building what the runs share (caches, shared stages) here, once."""
        for objective in dict.fromkeys(o for o, _ in todo):
            self.prepare(objective, record, teacher_net)
        values = dataclasses.asdict(self.cfg)
        return [Job(values, self.plan.objectives.index(o), seed, f"{self.plan.task.name}/{o.name} seed {seed}", self.precision,
                    type(self))
                for o, seed in todo]

    def run_label(self, objective, seed: int) -> str:
        return f"{self.plan.task.name}/{objective.name}/{self.plan.init.spec} seed {seed}"

    def run_and_store(self, objective, seed, record, teacher_net, prefix: str = "", quiet: bool = False) -> str:
        """Train one seed of one objective and write its row, under a lease (:func:`.leasing.train_under_lease`) so that
        processes sharing the store never train it twice. Returns ``STORED``, ``DONE`` (its row exists) or ``HELD``
        (another live worker is training it: skipped; said unless ``quiet``)."""
        identity = self.identity(objective, record, seed)
        key = run_key(identity)
        if not self.cfg.force and self.plan.store.has(key):
            return DONE
        if prefix:
            self.prefix = prefix
        return train_under_lease(self.plan.store, key, self.run_label(objective, seed),
                                 lambda: self.run_one(objective, seed, identity, key, record, teacher_net), force=self.cfg.force,
                                 # under accelerate launch every process trains the same run together: nothing to divide
                                 leased=self.accelerator.num_processes == 1, writes=self.accelerator.is_main_process,
                                 log=self.log, quiet=quiet)

    def finish_held(self, held: list[tuple], record: TeacherRecord, teacher_net) -> None:
        """Wait for the runs other workers hold (:func:`.leasing.wait_for_held`), training any whose holder died."""
        wait_for_held(self.plan.store, held, lambda o, s: self.run_and_store(o, s, record, teacher_net, quiet=True),
                      self.run_label, self.log)

    def rows(self, record: TeacherRecord) -> list[dict]:
        plan = self.plan
        rows = [plan.store.get(run_key(self.identity(o, record, s))) for o in plan.objectives for s in plan.seeds]
        return [r for r in rows if r is not None]

    def run(self, wait: bool = True) -> list[dict]:
        """Train every pending run and return the stored rows. Runs another worker holds are skipped; with ``wait``
        this process then waits for them (:meth:`finish_held`), else they are left in ``self.held``."""
        plan, cfg = self.plan, self.cfg
        start = time.perf_counter()
        record, todo = self.pending()
        self.held = []
        if todo:
            self.log(f"{len(todo)} run(s) to train")
            teacher_net = self.teacher_net(record)
            release()  # the teacher's fine-tuning freed its heap: handed back before the caches are built beside it
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
            note_unsaved(rows, self.log)
        plan.store.close()  # a suite runs many Runners: release each one's connection
        return rows

    def profile_models(self, record: TeacherRecord, teacher_net=None, threads: int | None = None) -> None:
        """Size and speed of the teacher and of the student's architecture, once per machine (:func:`.profile.profile_pair`)."""
        if self.accelerator.is_main_process:
            teacher_net = teacher_net if teacher_net is not None else self.teacher_net(record)
            profile_pair(self._new_student(self.plan.seeds[0], teacher_net)[0], teacher_net, threads, self.log)

    def prepare_team(self) -> list[TeacherRecord]:
        """A multi-teacher objective's team: every member fine-tuned (or reused) and scored, then loaded once with its
        own tokenizer for every seed that follows."""
        self.team_records = [self.teacher(name) for name in self.plan.team]
        self.team = [(r, load_teacher(r, self.plan.task), load_tokenizer(str(r.path))) for r in self.team_records]
        return self.team_records

    def _new_student(self, seed, teacher_net):
        """Seed ``seed``'s student built from its init, and the layer mapping it was copied with."""
        student, mapping = build_student(self.plan.init, teacher_net, seed,
                                         lambda name: load_task_model(name, self.plan.task, attn_implementation=None))
        return (set_pooling(student, self.plan.pooling) if self.plan.pooling else student), mapping

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
                                          seed=seed, team=team_info, student_params=sum(p.numel() for p in student.parameters()),
                                          pooling=model_pooling(student), teacher_pooling=model_pooling(teacher_net)))
        return student, tokenizer, objective, mapping, multi

    def _teacher_source(self, objective, record, teacher_net, own_tokens: bool, parts: list | None = None):
        """:meth:`.sources.TeacherSources.source`, its time counted as the run's "caches" (built there on first use)."""
        start = time.perf_counter()
        try:
            return self.sources().source(objective, record, teacher_net, own_tokens, parts)
        finally:
            self.timings["caches"] += time.perf_counter() - start

    def prepare(self, objective_cls, record, teacher_net) -> None:
        """Build, once, what every seed of ``objective_cls`` shares: the teacher-output caches and the shared stages
        (TED's Stage I). Workers started after this only read them (``--workers``)."""
        plan, cfg = self.plan, self.cfg
        seed = plan.seeds[0]
        student, tokenizer, objective, _, _ = self._build(objective_cls, seed, teacher_net, log=False)
        own_tokens = tokenizer.get_vocab() != self.tokenizer.get_vocab() if plan.init.pretrained else False
        teacher = self._teacher_source(objective, record, teacher_net, own_tokens)
        shared = self.sources().shared(objective, record, tokenizer)
        if shared is not None:
            train_part, select_part = selection_split(plan.train_all, cfg.selection_fraction, seed)  # labelled: Stage I
            result = self.trainer()(student, objective, teacher, self._encode(tokenizer, train_part),
                                    self._encode(tokenizer, select_part), seed=seed, epochs=cfg.epochs, lr=cfg.lr,
                                    label=f"{objective.name} shared stages", shared=shared, only_shared=True)
            cost.stage_parts(objective, shared, result, cfg.epochs, cfg.lr, record.path.parent, self.accelerator.is_main_process)

    def fit(self, objective_cls, seed, record, teacher_net) -> FitResult:
        """Build seed ``seed``'s student and objective, train them (and an objective's candidates), choosing on the
        selection split only: dev is not touched here (``distilbench search`` calls this alone)."""
        plan, cfg = self.plan, self.cfg
        train_part, select_part = plan.training_part(objective_cls, seed)
        student, tokenizer, objective, mapping, multi = self._build(objective_cls, seed, teacher_net)
        own_tokens = tokenizer.get_vocab() != self.tokenizer.get_vocab() if plan.init.pretrained else False
        # the teacher's fine-tuning is part of the cost of every run whose student was copied from it or reads it
        parts = [cost.teacher_part(record)] if objective.uses_teacher or multi or plan.init.pretrained is None else []
        teacher = self._teacher_source(objective, record, teacher_net, own_tokens, parts)
        teacher_train_enc = self._encode(self.tokenizer, train_part) if own_tokens and teacher and not teacher.covered(0) else None
        label = f"{objective.name} seed {seed}"
        shared = self.sources().shared(objective, record, tokenizer)
        train_enc, select_enc = self._encode(tokenizer, train_part), self._encode(tokenizer, select_part)
        trainer = self.trainer()

        def train_one(model, run_label: str, shared=None):
            return trainer(model, objective, teacher, train_enc, select_enc, seed=seed, epochs=cfg.epochs, lr=cfg.lr,
                           label=run_label, teacher_train_enc=teacher_train_enc, shared=shared)

        result = train_one(student, label, shared)
        stage_parts, stage_s = cost.stage_parts(objective, shared, result, cfg.epochs, cfg.lr, record.path.parent,
                                                self.accelerator.is_main_process)
        candidates = objective.candidates()  # hook: AutoSKD's snapshots of θ; none for most objectives
        if candidates:
            student, result = retrain_candidates(candidates, result, objective, train_one, label,
                                                 lambda: self._new_student(seed, teacher_net)[0], self.log,
                                                 self.plan.task.main_score)
        summary = objective.summary()
        if summary:
            self.log("\n".join(f"{label}: {line}" for line in summary.splitlines()))
        # a shared stage trained here is a shared part, not this run's own time; a teacher in the team is listed once
        spent = {"own_s": result.train_time_s - stage_s, "shared": list({p["id"]: p for p in parts + stage_parts}.values())}
        return FitResult(student, tokenizer, objective, result, mapping, multi, label, spent)

    def run_one(self, objective_cls, seed, identity, key, record, teacher_net) -> dict:
        """Train one seed (:meth:`fit`), then score it on dev: its row."""
        plan, cfg, task = self.plan, self.cfg, self.plan.task
        fit = self.fit(objective_cls, seed, record, teacher_net)
        student, tokenizer, label = fit.student, fit.tokenizer, fit.label
        dev_preds, dev_labels, dev_metrics, family_extra = self.score_dev(student, tokenizer)
        teacher_metrics = record.dev_metrics(fingerprint(plan.dev))
        if fit.multi:
            teacher_metrics = max((r.dev_metrics(fingerprint(plan.dev)) for r in self.team_records), key=lambda m: m["score"])
        self.log(f"{label}: dev {task.main_score} = {100 * dev_metrics['score']:.2f} (best epoch {fit.result.best_epoch}, "
                 f"{fit.result.examples_per_s:.1f} ex/s)")
        profile = None
        if self.accelerator.is_main_process:  # measured by profile_models before the runs; read from its cache here
            models = pair_profiles(student, teacher_net, torch.get_num_threads(), self.log)
            profile = row_profile(*models, dev_metrics["score"], teacher_metrics["score"], task.higher_is_better, fit.spent)
        row = student_row(cfg, plan, fit, key=key, identity=identity, seed=seed, record=record, dev_metrics=dev_metrics,
                          teacher_metrics=teacher_metrics, dev_preds=dev_preds, dev_labels=dev_labels,
                          precision=self.precision, device=str(self.accelerator.device), profile=profile, family_extra=family_extra)
        self.keep_student(fit, *self.saved_head(), row)
        return row

    def score_dev(self, student, tokenizer) -> tuple:
        """Family hook: the student's dev predictions, the labels they pair with, its dev metrics, and the family's
        extra row fields (None here)."""
        plan = self.plan
        dev_preds = predict(student, self._encode(tokenizer, plan.dev), plan.task, self.cfg, self.accelerator)
        dev_labels = np.array([e.label for e in plan.dev])
        return dev_preds, dev_labels, compute_metrics(plan.task, dev_preds, dev_labels), None

    def saved_head(self) -> tuple:
        """Family hook: the label names and the tokenizer's length a saved student carries (``--save-students``)."""
        return self.plan.task.labels, self.cfg.max_length

    def keep_student(self, fit: FitResult, labels, max_length: int, row: dict) -> None:
        """``--save-students``: write the trained student here, where the model lives (a worker's process too)."""
        if self.cfg.save_students and self.accelerator.is_main_process:
            folder = save_student(fit.student, fit.tokenizer, labels, max_length, row, self.cfg.save_students)
            self.log(f"{fit.label}: student saved to {folder}")

"""The one training loop every objective runs in, plus evaluation.

Read :func:`train` first, then its helpers in the order it calls them: for each stage the objective declares
(:func:`_begin_stage`, or a shared stage read from its cache), for each epoch (:func:`_train_epoch`), for each
length-grouped batch (:func:`_step`): the teacher's outputs (from the cache when it covers what the objective needs),
the objective's outer step, the student's outputs, the objective's loss (:func:`_loss`), a guarded optimiser step.
After each epoch of the last stage the selection split (held out of train, never dev) scores the student
(:func:`_select`), and the best epoch is kept (:func:`_finish`).

Objectives take part only through the hooks of :class:`distilbench.objectives.Objective` (``stages``,
``begin_stage``, ``stage_identity``, ``choose_teacher``, ``outer_step``) and what their stages declare (``shared``,
``holdout``, ``train_student``, ``needs_student``): the loop names no objective.
"""
from __future__ import annotations

import json
import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ...config import RunConfig
from ...data.batching import BatchLoader, Encoded, eval_batches, holdout_positions, length_grouped_batches
from ...data.metrics import compute_metrics
from ...data.lm import LMBlocks
from ...data.qa import QAWindows
from ...data.tasks import Task
from ...errors import TrainingDiverged
from ...hashing import stable_hash
from ...objectives import LossOutput, Needs, Objective, Stage, StepContext
from .outputs import TeacherSource, model_outputs  # TeacherSource, model_outputs: imported from here by tests and benchmarks too
from .parallel import average_grads, finite_everywhere, fused_adamw, location
from .lm import evaluate_blocks
from .qa_eval import evaluate_spans


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # per epoch: stage, epoch, mean loss terms, selection metrics
    best_epoch: int = 0
    best_select_score: float = float("nan")
    train_time_s: float = 0.0
    examples_per_s: float = 0.0
    peak_mem_mb: float = 0.0
    stage_times: dict[str, float] = field(default_factory=dict)  # seconds per stage actually trained


def peak_memory_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    if torch.cuda.is_available():
        rss = max(rss, torch.cuda.max_memory_allocated() / 2**20)
    return rss


@dataclass
class SharedStages:
    """Where shared stages (see ``Stage.shared``) get their data and keep their results: the teacher's split, the
    teacher's seed, and a folder beside the cached teacher."""

    train_enc: Encoded
    seed: int
    folder: Path
    fingerprint: str  # teacher key + data: part of every cached stage's key

    def path(self, objective: Objective, stage: Stage, epochs: float, lr: float) -> Path:
        identity = objective.stage_identity(stage)
        key = stable_hash({"stage": stage.name, "objective": identity, "data": self.fingerprint,
                           "epochs": epochs, "lr": lr, "seed": self.seed})
        return self.folder / f"stage-{identity.get('objective', objective.name)}-{stage.name}-{key}.pt"


def train(student: nn.Module, objective: Objective, teacher: TeacherSource | None, *, train_enc: Encoded,
          select_enc: Encoded, task: Task, cfg: RunConfig, seed: int, accelerator: Accelerator, epochs: float, lr: float,
          progress: Callable | None = None, teacher_train_enc: Encoded | None = None, shared: SharedStages | None = None,
          micro_batch: int = 0, only_shared: bool = False) -> TrainResult:
    """Train ``student`` with ``objective`` through each stage the objective declares (``objective.stages()``).

    Per stage: the objective's ``begin_stage`` hook; a shared stage already trained is read from its cache
    (:func:`_load_shared_stage`), one trained here is written there (:func:`_save_shared_stage`); otherwise AdamW with
    linear warm-up and decay runs the stage's epochs (``epochs``/``lr`` unless the stage sets its own) over
    length-grouped batches of ``train_enc``, one :func:`_step` per batch. After each epoch of the last stage the
    selection split ``select_enc`` (held out of train, never dev) scores the student (:func:`_select`); the best epoch's
    weights are restored at the end when ``cfg.select_best_epoch``.

    ``teacher``: the teacher's outputs per batch (None: the objective reads no teacher); ``seed`` fixes the data order
    and dropout masks; ``progress(step, total, mean terms, examples/s, stage)`` is called after each step;
    ``teacher_train_enc``: ``train_enc``'s examples in the teacher's tokenisation, when it has its own; ``shared``:
    where shared stages (TED's Stage I) are cached, and ``only_shared`` trains only those (built once before workers
    start); ``micro_batch``: run each batch in parts of at most this many examples (separable objectives only).
    """
    if micro_batch and not objective.separable:
        raise ValueError(f"objective {objective.name} cannot run in micro-batches: its loss is not a mean of per-example losses")
    loop = _Loop(objective, teacher, task, cfg, accelerator, micro_batch, progress)
    student.to(accelerator.device)
    objective.to(accelerator.device)
    result, stages = TrainResult(), objective.stages()
    for index, stage in enumerate(stages):
        if only_shared and not (stage.shared and shared is not None):
            break  # building the shared stages before parallel workers start (Runner.prepare)
        stage_epochs = stage.epochs if stage.epochs is not None else epochs
        stage_lr = stage.lr if stage.lr is not None else lr
        objective.begin_stage(stage)  # hook: the objective sets which of its own modules this stage trains
        student.requires_grad_(stage.train_student)
        cached = shared.path(objective, stage, stage_epochs, stage_lr) if stage.shared and shared is not None else None
        if _load_shared_stage(objective, stage, cached, result, accelerator.device):
            continue
        # a shared stage trains on the teacher's split with the teacher's seed: the same result for every student seed
        data = (shared.train_enc, None, shared.seed) if cached is not None else (train_enc, teacher_train_enc, seed)
        student, run = _begin_stage(loop, student, stage, *data, stage_epochs, stage_lr)
        stage_start = time.perf_counter()
        while run.step < run.total_steps:
            means = _train_epoch(loop, run, student)
            run.epoch += 1
            record = {"stage": stage.name, "epoch": run.epoch, "steps": run.step, **means}
            if index == len(stages) - 1 and stage.train_student:  # the last stage's student is the one kept
                record["select"] = _select(loop, result, accelerator.unwrap_model(student), select_enc, run.epoch)
            result.history.append(record)
        student = accelerator.unwrap_model(student)
        # accelerate keeps every model and optimiser it prepared: without this, each seed's student with its AdamW
        # state (and the teacher's, after its fine-tuning) would stay in memory for the rest of the process
        accelerator.free_memory()
        result.stage_times[stage.name] = time.perf_counter() - stage_start
        _save_shared_stage(objective, cached, accelerator)
    return _finish(loop, result, student)


@dataclass
class _Loop:
    """What every stage and step of one :func:`train` call shares."""

    objective: Objective
    teacher: TeacherSource | None
    task: Task
    cfg: RunConfig
    accelerator: Accelerator
    micro_batch: int
    progress: Callable | None
    started: float = field(default_factory=time.perf_counter)
    examples: int = 0  # trained on so far, all stages: the speed that progress and the result report
    best: Any = None  # the best epoch's weights, in a temporary file (select_best_epoch)
    selected_epoch: int = 0  # the epoch the selection split scored last


@dataclass
class _StageRun:
    """One stage being trained: its data (less any held-out share), seed, optimiser, schedule and counters."""

    stage: Stage
    enc: Encoded
    teacher_enc: Encoded | None
    seed: int
    holdout: Callable[[], dict]  # the next batch of the stage's held-out share (StepContext.holdout)
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    world: int  # processes taking part (accelerate launch), each taking 1/world of the batches
    lengths: np.ndarray
    step: int = 0
    epoch: int = 0  # epochs finished


def _begin_stage(loop: _Loop, student: nn.Module, stage: Stage, enc: Encoded, teacher_enc: Encoded | None, seed: int,
                 epochs: float, lr: float) -> tuple[nn.Module, _StageRun]:
    """A stage's data, seed, optimiser and schedule, and the student prepared by accelerate for them."""
    cfg, accelerator = loop.cfg, loop.accelerator
    holdout = _no_holdout
    if stage.holdout > 0:  # the objective's own held-out share (AutoSKD: distillation half / validation half)
        kept, held = holdout_positions(len(enc), stage.holdout, seed)
        held_enc, held_t = enc.subset(held), teacher_enc.subset(held) if teacher_enc is not None else None
        enc, teacher_enc = enc.subset(kept), teacher_enc.subset(kept) if teacher_enc is not None else None
        holdout = _cycle(held_enc, held_t, cfg.batch_size, seed, loop.task.regression, accelerator.device)
    torch.manual_seed(seed)  # dropout masks are part of what seed k fixes
    params = [p for p in list(student.parameters()) + list(loop.objective.parameters()) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases and LayerNorm weights
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=fused_adamw(accelerator.device))
    world = accelerator.num_processes
    steps_per_epoch = math.ceil(math.ceil(len(enc) / cfg.batch_size) / world)  # each process takes 1/world of the batches
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    warmup = int(cfg.warmup_ratio * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    if stage.train_student:
        student, optimizer = accelerator.prepare(student, optimizer)
    else:  # a frozen student (TED's Stage I) is no DDP module: DDP refuses a model with nothing to train
        optimizer = accelerator.prepare(optimizer)
    return student, _StageRun(stage, enc, teacher_enc, seed, holdout, params, optimizer, schedule, total_steps, world,
                              enc.lengths())


def _train_epoch(loop: _Loop, run: _StageRun, student: nn.Module) -> dict[str, float]:
    """One pass over this process's share of the stage's batches (or what is left of its steps); the mean of each
    logged term over the batches."""
    student.train(run.stage.train_student)
    loop.objective.train()
    batches = length_grouped_batches(run.lengths, loop.cfg.batch_size, run.seed, run.epoch)
    # data-parallel processes each take every world-th batch, the list topped up to a multiple of world with its first
    batches = batches + batches[: (-len(batches)) % run.world]  # (equal steps: DDP's all-reduce waits for all)
    batches = batches[loop.accelerator.process_index::run.world]
    sums: dict[str, float] = {}
    n_batches = 0
    for batch in BatchLoader(run.enc, batches, loop.task.regression, run.teacher_enc):
        if run.step >= run.total_steps:
            break
        _step(loop, run, student, {k: v.to(loop.accelerator.device) for k, v in batch.items()}, sums)
        n_batches += 1
        if loop.progress:
            loop.progress(run.step, run.total_steps, {k: v / n_batches for k, v in sums.items()},
                          loop.examples / (time.perf_counter() - loop.started), run.stage)
    return {k: v / max(1, n_batches) for k, v in sums.items()}


def _step(loop: _Loop, run: _StageRun, student: nn.Module, batch: dict, sums: dict[str, float]) -> None:
    """One optimiser step on ``batch``, its logged terms added to ``sums``. One part unless micro-batching (the
    teacher's fine-tuning, to halve activation memory): a separable loss is a mean over examples, so the parts' losses
    weighted by their share of the batch sum to it."""
    accelerator, stage = loop.accelerator, run.stage
    for part, share in micro_batches(batch, loop.micro_batch):
        out, logged = _loss(loop, run, student, part)
        if not finite_everywhere(out.loss, run.world):  # every process stops, or none (the others would wait forever)
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in out.terms.items())
            raise TrainingDiverged(f"loss became {out.loss.item()} at stage {stage.name}, epoch {run.epoch + 1}, step {run.step + 1} "
                                   f"({terms}); lower --lr or check the inputs")
        accelerator.backward(out.loss * share)  # x * 1.0 is exact: whole batches are unchanged
        for k, v in (("loss", out.loss.detach()), *out.terms.items(), *logged.items()):
            sums[k] = sums.get(k, 0.0) + float(v) * share
    if run.world > 1:  # the student's gradients are averaged by DDP; the objective's own modules by hand
        average_grads(loop.objective)
    if loop.cfg.max_grad_norm > 0:
        accelerator.clip_grad_norm_(run.params, loop.cfg.max_grad_norm)
    run.optimizer.step()
    run.schedule.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    loop.examples += len(batch["labels"])


def _loss(loop: _Loop, run: _StageRun, student: nn.Module, part: dict) -> tuple[LossOutput, dict[str, float]]:
    """The objective's loss on one part of a batch, at the run's precision, and what its outer step logged.

    The objective's step hooks, in this order: ``choose_teacher`` (this step's teacher, or several), then
    ``outer_step`` with them (an update of the objective's own outer variables, AutoSKD's θ, which may draw on the
    stage's held-out share), then the student's forward pass and the objective's loss."""
    objective, teacher = loop.objective, loop.teacher
    with loop.accelerator.autocast():
        t_out, logged = None, {}
        if teacher is not None and objective.uses_teacher:  # one teacher per step, or several (a list)
            choice = objective.choose_teacher(run.step, run.total_steps)
            t_out = teacher(part, choice) if isinstance(choice, int) else [teacher(part, j) for j in choice]
            logged = objective.outer_step(StepContext(run.step, run.total_steps, loop.accelerator.unwrap_model(student), part,
                                                      teacher, run.holdout, t_out, choice))
        s_out = model_outputs(student, part, objective.needs) if run.stage.needs_student else None
        return objective(s_out, t_out, part, run.stage), logged


def _select(loop: _Loop, result: TrainResult, student: nn.Module, select_enc: Encoded, epoch: int) -> dict[str, float]:
    """End-of-epoch selection: the selection split's metrics for this epoch; the epoch becomes the result's when it
    beats the best so far (or always, without ``select_best_epoch``: the last epoch is kept)."""
    cfg = loop.cfg
    metrics = evaluate(student, select_enc, loop.task, cfg, loop.accelerator)
    loop.selected_epoch = epoch
    better = (metrics["score"] > result.best_select_score if loop.task.higher_is_better  # perplexity: lower is better
              else metrics["score"] < result.best_select_score)
    if not cfg.select_best_epoch or result.best_epoch == 0 or better:
        result.best_epoch, result.best_select_score = epoch, metrics["score"]
        if cfg.select_best_epoch:
            # the best epoch's weights wait in a temporary file, not in memory: a base-size model's copy
            # would add its whole size to the run's peak memory while training goes on
            loop.best = loop.best or tempfile.NamedTemporaryFile(prefix="distilbench-best-", suffix=".pt")
            torch.save(student.state_dict(), loop.best.name)
    return metrics


def _finish(loop: _Loop, result: TrainResult, student: nn.Module) -> TrainResult:
    """Time, speed and peak memory into the result; the best epoch's weights back into the student when a later
    epoch was worse."""
    result.train_time_s = time.perf_counter() - loop.started
    result.examples_per_s = loop.examples / result.train_time_s if result.train_time_s > 0 else 0.0
    if loop.best is not None:
        if result.best_epoch != loop.selected_epoch:  # an earlier epoch was better than the last
            student.load_state_dict(torch.load(loop.best.name, map_location=location(loop.accelerator.device), weights_only=True))
        loop.best.close()  # deletes the file
    student.requires_grad_(True)
    result.peak_mem_mb = peak_memory_mb()
    return result


def _load_shared_stage(objective: Objective, stage: Stage, path: Path | None, result: TrainResult, device) -> bool:
    """Whether ``stage`` is a shared stage another seed (or run) already trained: then its result, the objective's
    state, is read from ``path`` and the stage is not trained again."""
    if path is None or not path.exists():
        return False
    objective.load_state_dict(torch.load(path, map_location=location(device), weights_only=True))
    try:  # the losses of the run that trained it (training.teachers.cost.record_stage), so every row shows how the stage went
        trained = json.loads(path.with_suffix(".json").read_text()).get("history") or []
    except (OSError, ValueError):
        trained = []
    result.history.append({"stage": stage.name, "cached": str(path), **({"trained": trained} if trained else {})})
    return True


def _save_shared_stage(objective: Objective, path: Path | None, accelerator: Accelerator) -> None:
    """A shared stage just trained: the objective's state written to ``path`` (None: not a shared stage) for every
    seed that follows."""
    if path is None or not accelerator.is_main_process:
        return
    save_atomic({k: v.detach().cpu() for k, v in objective.state_dict().items()}, path)


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a file beside ``path``, then renamed onto it: a killed run never leaves half a file there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def micro_batches(batch: dict, size: int):
    """``(part, share)`` pairs covering ``batch`` in order: the whole batch with share 1 when ``size`` is 0 or not smaller
    than the batch, else consecutive slices of at most ``size`` examples, each with its share of the batch's examples."""
    n = len(batch["labels"])
    if not size or size >= n:
        yield batch, 1.0
        return
    for start in range(0, n, size):
        part = {k: v[start:start + size] for k, v in batch.items()}
        yield part, len(part["labels"]) / n


def _cycle(enc: Encoded, teacher_enc: Encoded | None, batch_size: int, seed: int, regression: bool, device) -> Callable[[], dict]:
    """Endless length-grouped batches of a held-out share, reshuffled each pass (seeded): ``next_batch()``."""
    def batches():
        epoch = 0
        while True:
            order = length_grouped_batches(enc.lengths(), batch_size, seed + 104_729, epoch)
            for batch in BatchLoader(enc, order, regression, teacher_enc):
                yield {k: v.to(device) for k, v in batch.items()}
            epoch += 1
    iterator = batches()
    return lambda: next(iterator)


def _no_holdout() -> dict:
    raise RuntimeError("this stage holds no data out: declare Stage(holdout=...) to use StepContext.holdout")


@torch.no_grad()
def predict(model: nn.Module, enc: Encoded, task: Task, cfg: RunConfig, accelerator: Accelerator) -> np.ndarray:
    """Predictions in the examples' order (class ids, or scores for regression)."""
    model.eval()
    model.to(accelerator.device)
    batches = eval_batches(enc.lengths(), cfg.eval_batch_size)
    preds = np.zeros(len(enc), dtype=np.float64 if task.regression else np.int64)
    for ids, batch in zip(batches, BatchLoader(enc, batches, task.regression)):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logits = model_outputs(model, batch, Needs()).logits.float()
        values = logits[:, 0] if task.regression else logits.argmax(-1)
        preds[ids] = values.cpu().numpy()
    return preds


# how a family's own encoding type is scored: extractive QA windows by EM and F1 of the best span per question;
# causal-LM blocks by perplexity (lower is better); any other encoding is a sentence task's, scored by its predictions
SCORERS: dict[type, Callable] = {
    QAWindows: evaluate_spans,
    LMBlocks: lambda model, enc, task, cfg, accelerator: evaluate_blocks(model, enc, cfg.eval_batch_size, accelerator),
}


def evaluate(model: nn.Module, enc: Encoded | QAWindows, task: Task, cfg: RunConfig, accelerator: Accelerator) -> dict[str, float]:
    own = SCORERS.get(type(enc))
    if own is not None:
        return own(model, enc, task, cfg, accelerator)
    preds = predict(model, enc, task, cfg, accelerator)
    return compute_metrics(task, preds, np.array([e.label for e in enc.examples]))

"""The one training loop every objective runs in, plus evaluation.

Read it top to bottom: for each stage the objective declares, for each epoch, for each length-grouped batch: the
student's outputs, the teacher's outputs (from the cache when it covers what the objective needs), the objective's
loss, a guarded optimiser step. After each epoch of the last stage the selection split (held out of train, never dev)
scores the student, and the best epoch is kept.
"""
from __future__ import annotations

import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from ..models.capture import capture
from ..config import RunConfig
from ..hashing import stable_hash
from ..data.batching import MODEL_INPUTS, BatchLoader, Encoded, eval_batches, holdout_positions, length_grouped_batches
from ..errors import TrainingDiverged
from ..data.metrics import compute_metrics
from ..objectives import Needs, Objective, Outputs, StepContext
from .precision import ACCELERATE, resolve as resolve_precision
from ..data.tasks import Task


def make_accelerator(cfg: RunConfig, precision: str | None = None) -> Accelerator:
    """Device placement and mixed precision through accelerate: the same code on CPU, one GPU or several.
    ``precision`` (fp32 | bf16 | fp16) is the run's resolved precision; None resolves ``cfg.mixed_precision`` now."""
    precision = precision or resolve_precision(cfg.mixed_precision, cfg.cpu)[0]
    return Accelerator(cpu=cfg.cpu, mixed_precision=ACCELERATE[precision])


def model_outputs(model: nn.Module, batch: dict, needs: Needs, prefix: str = "") -> Outputs:
    inputs = {k: batch[prefix + k] for k in MODEL_INPUTS if prefix + k in batch}
    if not needs.attentions:
        out = model(**inputs, output_hidden_states=needs.hidden_states)
        return Outputs(out.logits, out.hidden_states if needs.hidden_states else None)
    with capture(model) as layers:  # pre-softmax scores and per-head values need more than output_attentions gives
        out = model(**inputs, output_hidden_states=needs.hidden_states)
    return Outputs(out.logits, out.hidden_states if needs.hidden_states else None, layers)


class TeacherSource:
    """The teacher's outputs for a batch. A frozen teacher in eval mode gives the same logits every epoch and seed, so
    when an objective needs only logits they come from a cache computed once; otherwise the teacher runs, without
    gradients, on its own tokenisation when it has one."""

    def __init__(self, teachers: list[nn.Module], needs: Needs, logits_cache: list[torch.Tensor | None] | None = None,
                 own_tokens: bool = False, output_cache: list | None = None, layers: list[int] | None = None):
        self.teachers, self.needs, self.own_tokens = teachers, needs, own_tokens
        self.cache = logits_cache or [None] * len(teachers)
        self.outputs = output_cache or [None] * len(teachers)  # teacher_cache.OutputCache: hidden states, scores, values
        self.layers = layers or []
        self.calls = 0  # teacher forward passes actually run (the cache makes this 0)
        for t in teachers:
            t.eval().requires_grad_(False)

    def covered(self, i: int) -> bool:
        if self.cache[i] is None:
            return False
        if self.needs == Needs(logits=True, token_aligned=self.needs.token_aligned):
            return True
        return self.outputs[i] is not None and self.outputs[i].covers(self.needs, self.layers)

    @torch.no_grad()
    def __call__(self, batch: dict, i: int = 0) -> Outputs:
        device = batch["input_ids"].device
        if self.covered(i):
            logits = self.cache[i][batch["idx"].cpu()].to(device)
            if self.outputs[i] is None:
                return Outputs(logits)
            return self.outputs[i].outputs(batch["idx"].cpu(), logits, device)
        self.calls += 1
        return model_outputs(self.teachers[i], batch, self.needs, "teacher_" if self.own_tokens else "")


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


def train(student: nn.Module, objective: Objective, teacher: TeacherSource | None, train_enc: Encoded,
          select_enc: Encoded, task: Task, cfg: RunConfig, seed: int, accelerator: Accelerator,
          epochs: float, lr: float, progress: Callable | None = None, teacher_train_enc: Encoded | None = None,
          shared: SharedStages | None = None, micro_batch: int = 0, *, only_shared: bool = False) -> TrainResult:
    if micro_batch and not objective.separable:
        raise ValueError(f"objective {objective.name} cannot run in micro-batches: its loss is not a mean of per-example losses")
    device = accelerator.device
    student.to(device)
    objective.to(device)
    result = TrainResult()
    stages = objective.stages()
    best_state, t_start, n_examples = None, time.perf_counter(), 0
    for s_index, stage in enumerate(stages):
        last_stage = s_index == len(stages) - 1
        if only_shared and not (stage.shared and shared is not None):
            break  # building the shared stages before parallel workers start (Runner.prepare)
        stage_epochs = stage.epochs if stage.epochs is not None else epochs
        stage_lr = stage.lr if stage.lr is not None else lr
        objective.begin_stage(stage)
        student.requires_grad_(stage.train_student)
        cached = shared.path(objective, stage, stage_epochs, stage_lr) if stage.shared and shared is not None else None
        if cached is not None and cached.exists():  # a shared stage another seed (or run) already trained
            objective.load_state_dict(torch.load(cached, map_location=device, weights_only=True))
            result.history.append({"stage": stage.name, "cached": str(cached)})
            continue
        stage_seed, enc = (shared.seed, shared.train_enc) if cached is not None else (seed, train_enc)
        t_enc = teacher_train_enc if cached is None else None
        holdout = None
        if stage.holdout > 0:  # the objective's own held-out share (AutoSKD: distillation half / validation half)
            kept, held = holdout_positions(len(enc), stage.holdout, stage_seed)
            held_enc, held_t = enc.subset(held), t_enc.subset(held) if t_enc is not None else None
            enc, t_enc = enc.subset(kept), t_enc.subset(kept) if t_enc is not None else None
            holdout = _cycle(held_enc, held_t, cfg.batch_size, stage_seed, task.regression, device)
        torch.manual_seed(stage_seed)  # dropout masks are part of what seed k fixes
        lengths = enc.lengths()
        params = [p for p in list(student.parameters()) + list(objective.parameters()) if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]  # no weight decay on biases and LayerNorm weights
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=stage_lr, fused=fused_adamw(device))
        world = accelerator.num_processes
        steps_per_epoch = math.ceil(math.ceil(len(enc) / cfg.batch_size) / world)  # each process takes 1/world of the batches
        total_steps = max(1, math.ceil(stage_epochs * steps_per_epoch))
        warmup = int(cfg.warmup_ratio * total_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
        student, optimizer = accelerator.prepare(student, optimizer)
        stage_start, step, epoch = time.perf_counter(), 0, 0
        while step < total_steps:
            student.train(stage.train_student)
            objective.train()
            batches = length_grouped_batches(lengths, cfg.batch_size, stage_seed, epoch)
            # several processes (accelerate launch) each take every world-th batch; one process takes them all. The list
            # is topped up to a multiple of world with its first batches, so every process takes the same number of steps
            # (DDP's all-reduce would wait forever for a process that has run out)
            batches = batches + batches[: (-len(batches)) % world]
            batches = batches[accelerator.process_index::world]
            sums: dict[str, float] = {}
            n_batches = 0
            for batch in BatchLoader(enc, batches, task.regression, t_enc):
                if step >= total_steps:
                    break
                batch = {k: v.to(device) for k, v in batch.items()}
                # one part unless micro-batching (the teacher's fine-tuning, to halve activation memory): a separable
                # loss is a mean over examples, so the parts' losses weighted by their share of the batch sum to it
                for part, share in micro_batches(batch, micro_batch):
                    with accelerator.autocast():
                        t_out, logged = None, {}
                        if teacher is not None and objective.uses_teacher:  # one teacher per step, or several (a list)
                            choice = objective.choose_teacher(step, total_steps)
                            t_out = teacher(part, choice) if isinstance(choice, int) else [teacher(part, j) for j in choice]
                            logged = objective.outer_step(StepContext(step, total_steps, accelerator.unwrap_model(student), part,
                                                                      teacher, holdout or _no_holdout, t_out, choice))
                        s_out = model_outputs(student, part, objective.needs) if stage.needs_student else None
                        out = objective(s_out, t_out, part, stage)
                    if not torch.isfinite(out.loss):
                        terms = ", ".join(f"{k}={v.item():.4g}" for k, v in out.terms.items())
                        raise TrainingDiverged(f"loss became {out.loss.item()} at stage {stage.name}, epoch {epoch + 1}, step {step + 1} "
                                               f"({terms}); lower --lr or check the inputs")
                    accelerator.backward(out.loss * share)  # x * 1.0 is exact: whole batches are unchanged
                    for k, v in (("loss", out.loss.detach()), *out.terms.items(), *logged.items()):
                        sums[k] = sums.get(k, 0.0) + float(v) * share
                if world > 1:  # the student's gradients are averaged by DDP; the objective's own modules by hand
                    _average_grads(objective)
                if cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                n_batches += 1
                n_examples += len(batch["labels"])
                if progress:
                    progress(step, total_steps, {k: v / n_batches for k, v in sums.items()}, n_examples / (time.perf_counter() - t_start),
                             stage)
            epoch += 1
            record = {"stage": stage.name, "epoch": epoch, **{k: v / max(1, n_batches) for k, v in sums.items()}}
            if last_stage and stage.train_student:
                metrics = evaluate(accelerator.unwrap_model(student), select_enc, task, cfg, accelerator)
                record["select"] = metrics
                if not cfg.select_best_epoch or result.best_epoch == 0 or metrics["score"] > result.best_select_score:
                    result.best_epoch, result.best_select_score = epoch, metrics["score"]
                    if cfg.select_best_epoch:
                        # the best epoch's weights wait in a temporary file, not in memory: a base-size model's copy
                        # would add its whole size to the run's peak memory while training goes on
                        best_state = best_state or tempfile.NamedTemporaryFile(prefix="distilbench-best-", suffix=".pt")
                        torch.save(accelerator.unwrap_model(student).state_dict(), best_state.name)
            result.history.append(record)
        student = accelerator.unwrap_model(student)
        # accelerate keeps every model and optimiser it prepared: without this, each seed's student with its AdamW
        # state (and the teacher's, after its fine-tuning) would stay in memory for the rest of the process
        accelerator.free_memory()
        result.stage_times[stage.name] = time.perf_counter() - stage_start
        if cached is not None and accelerator.is_main_process:
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".tmp-", suffix=".pt")
            os.close(fd)
            torch.save({k: v.detach().cpu() for k, v in objective.state_dict().items()}, tmp)
            os.replace(tmp, cached)  # atomic: a killed run never leaves a half-written stage
    result.train_time_s = time.perf_counter() - t_start
    result.examples_per_s = n_examples / result.train_time_s if result.train_time_s > 0 else 0.0
    if best_state is not None:
        if result.best_epoch != epoch:  # an earlier epoch was better than the last
            student.load_state_dict(torch.load(best_state.name, map_location=device, weights_only=True))
        best_state.close()  # deletes the file
    student.requires_grad_(True)
    result.peak_mem_mb = peak_memory_mb()
    return result


def fused_adamw(device: torch.device) -> bool:
    """AdamW's fused kernel where PyTorch has one we rely on (CPU, CUDA): one pass over each tensor instead of a dozen.
    On a CPU it cut the optimiser step of a 3-layer base-size student (embeddings included) from 0.27 s to 0.05 s,
    about a tenth of a whole training step; other devices keep the default implementation."""
    return device.type in ("cpu", "cuda")


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


def _average_grads(module: nn.Module) -> None:
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


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


def evaluate(model: nn.Module, enc: Encoded, task: Task, cfg: RunConfig, accelerator: Accelerator) -> dict[str, float]:
    preds = predict(model, enc, task, cfg, accelerator)
    return compute_metrics(task, preds, np.array([e.label for e in enc.examples]))

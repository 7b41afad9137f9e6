"""Task-agnostic (general) distillation, `distilbench pretrain`: a pretrained teacher without a task head distilled into
a student on unlabelled text (paper 002 §4; DistilBERT's, TinyBERT's general stage and MiniLM's recipe), saved as a
transformers folder that `distilbench run --init pretrained:FOLDER` then fine-tunes on each task.

- **Objectives**: the intermediate-layer ones and their ``+`` combinations (att-mse, att-kl, hid-seq, hid-cls,
  hid-cls-contrast, val-kl), label-free: the loss is their (weighted) intermediate term alone
  (:meth:`~distilbench.objectives.layerwise.LayerObjective.label_free`), by default at the last layer pair
  (``--layer-map last``, as paper 002 §4 distils). Vanilla KD needs the teacher's MLM head (the embedded sentence
  encoders ship without one): refused with that reason. Objectives with stages of their own (TED, LWD's schedule) or
  a team are refused: they need labels.
- **Student**: ``--init random`` (the teacher's config with ``--student-layers`` layers) or copied teacher layers
  (``first-k``, ``every-k``, ``layers:...``; paper 002 Table 4), built as for a task run.
- **Data**: a corpus (:mod:`distilbench.data.corpus`) packed into ``[CLS] ... [SEP]`` blocks of ``--max-length``; its
  held-out lines give the score, the mean distillation loss over the held-out blocks (lower is better), measured
  before and after training.
- **Budget**: ``--steps``, or ``--tokens`` (steps = ceil(tokens / (batch size x max length)): the padded batch's
  positions), or one pass over the training blocks. Step ``k`` reads batch ``k mod S`` of epoch ``k div S``'s seeded
  permutation of the blocks (``S`` batches an epoch), so the data order is a function of the seed and the step.
- **Resume**: every ``--checkpoint-every`` steps the student, the objective's own modules, AdamW, the schedule, the
  RNG and the counters go to ``OUT.checkpoint/state.pt`` (written beside it and renamed: a kill never leaves half a
  file); the same command resumes from it and gives the student an uninterrupted run gives. A checkpoint of other
  settings is refused, never mixed in.
- **Output**: ``OUT`` (written beside and renamed into place): the student (``AutoModel``, no head) and the teacher's
  tokenizer, ``README.md`` (a card) and ``distilbench.json`` (identity, key, scores, tokens, time, command, code).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...config import RunConfig
from ...data.corpus import EncoderBlocks, GeneralTask, pack_encoder_blocks, resolve_corpus, split_lines
from ...data.tasks import resolve_data_dir
from ...errors import UsageError
from ...hashing import stable_hash
from ...models.inits import build_student, parse_init
from ...models.loading import (has_mlm_head, load_encoder, load_tokenizer, model_config, model_fingerprint,
                               quiet_transformers)
from ...models.pooling import model_pooling
from ...objectives import OBJECTIVES, Context, get_objective
from ...objectives.layerwise import PREDICTION_LAYER, PREDICTION_PART, LayerObjective, label_free, without_labels
from ..loop.outputs import model_outputs
from ..loop.parallel import fused_adamw, make_accelerator
from ..loop.precision import resolve as resolve_precision
from ..runs.pairs import distillation_pairs
from ..runs.provenance import git_revision, package_versions

META, CARD, STATE = "distilbench.json", "README.md", "state.pt"
# what a layer objective reads that the label-free loss does not, and the layer map's spec (the identity holds the
# resolved pairs instead)
PREDICTION_ONLY = (*PREDICTION_PART, "layer_map")


@dataclass(frozen=True)
class Budget:
    """How long to distil: ``steps`` or ``tokens`` (at most one; neither: one pass over the training blocks)."""

    steps: int | None = None
    tokens: int | None = None

    def total_steps(self, blocks: int, batch_size: int, max_length: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.tokens is not None:
            return math.ceil(self.tokens / (batch_size * max_length))
        return math.ceil(blocks / batch_size)


@dataclass
class GeneralPlan:
    """Everything a pretraining needs, checked before anything is trained or written."""

    cfg: RunConfig
    objective: type[LayerObjective]
    init: object  # models.inits.InitPlan
    pairs: list[tuple[int, int]]
    train: EncoderBlocks
    held: EncoderBlocks
    corpus: dict
    total_steps: int
    seed: int
    out: Path
    checkpoint_every: int
    precision: str
    identity: dict = field(default_factory=dict)
    key: str = ""

    @property
    def state_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".checkpoint")


def refuse_objective(name: str, teacher: str) -> type[LayerObjective]:
    """The objective, or one line saying why it cannot distil without labels (exit 2)."""
    cls = get_objective(name)
    why = without_labels(cls)
    if why is not None:
        if why == PREDICTION_LAYER and not has_mlm_head(teacher):
            why += f"; teacher {teacher} has none (the embedded sentence encoders ship without one)"
        raise UsageError(f"objective {cls.name} cannot distil without labels: it {why}; task-agnostic distillation takes "
                         f"the intermediate-layer objectives ({', '.join(n for n in OBJECTIVES if label_free(OBJECTIVES.get(n)))}"
                         " and their + combinations)")
    return cls


def plan_general(cfg: RunConfig, corpus: str, budget: Budget, seed: int, out: str, checkpoint_every: int) -> GeneralPlan:
    """Check every input (one line and exit 2 for the first bad one), read and pack the corpus, and the identity."""
    objective = refuse_objective(cfg.objective, cfg.teacher)
    if cfg.schedule != "joint":
        raise UsageError("--schedule sequential distils the prediction layer second; task-agnostic distillation has none")
    if cfg.init.startswith("pretrained:"):
        raise UsageError("--init pretrained:... is a task run's student; pretraining starts from random or teacher layers")
    teacher_config = model_config(cfg.teacher)
    init = parse_init(cfg.init, teacher_config.num_hidden_layers, cfg.student_layers)
    pairs = distillation_pairs(cfg.layer_map, init, init.num_layers, teacher_config.num_hidden_layers)
    found = resolve_corpus(corpus)
    data_dir = resolve_data_dir(cfg.data_dir) or Path(".")
    tokenizer = load_tokenizer(cfg.teacher)
    train_lines, held_lines = split_lines(found, data_dir)
    train = pack_encoder_blocks(tokenizer, train_lines, cfg.max_length)
    held = pack_encoder_blocks(tokenizer, held_lines, cfg.max_length) if held_lines else None
    if held is None:
        raise UsageError(f"corpus {found.name} holds out no line (held_out {found.held_out} of {len(train_lines)} lines): "
                         "give a larger corpus")
    plan = GeneralPlan(cfg, objective, init, pairs, train, held, {}, budget.total_steps(len(train), cfg.batch_size,
                       cfg.max_length), seed, Path(out).expanduser().resolve(), checkpoint_every,
                       resolve_precision(cfg.mixed_precision, cfg.cpu)[0])
    plan.corpus = {"name": found.name, "version": found.version, "provenance": found.provenance,
                   "train_blocks": len(train), "train_tokens": train.tokens, "held_blocks": len(held),
                   "held_tokens": held.tokens, "data": hashlib.sha256(train.input_ids.numpy().tobytes()).hexdigest()[:16]}
    plan.identity = {"family": GeneralTask.family, "objective": objective.name, "objective_version": objective.version,
                     **{k: v for k, v in objective.param_values(cfg).items() if k not in PREDICTION_ONLY},
                     "teacher": cfg.teacher, "teacher_fingerprint": model_fingerprint(cfg.teacher), "init": init.spec,
                     "layer_map": pairs, "corpus": {k: plan.corpus[k] for k in ("name", "version", "data")},
                     "max_length": cfg.max_length, "batch_size": cfg.batch_size, "lr": cfg.lr,
                     "warmup_ratio": cfg.warmup_ratio, "weight_decay": cfg.weight_decay,
                     "max_grad_norm": cfg.max_grad_norm, "steps": plan.total_steps, "seed": seed,
                     "precision": plan.precision}
    plan.key = stable_hash(plan.identity)
    _check_out(plan)
    return plan


def _check_out(plan: GeneralPlan) -> None:
    """``OUT`` must be new, or this pretraining's finished student; a checkpoint must be this pretraining's."""
    if plan.out.exists() and _finished_key(plan.out) not in (plan.key,):
        raise UsageError(f"--out {plan.out} exists and is not this pretraining's student: choose a new folder")
    state = plan.state_dir / STATE
    if state.is_file():
        saved = torch.load(state, map_location="cpu", weights_only=True)["key"]
        if saved != plan.key:
            raise UsageError(f"{plan.state_dir} holds the checkpoint of another pretraining (key {saved}, this one "
                             f"{plan.key}): remove it or choose another --out")


def _finished_key(out: Path) -> str | None:
    try:
        return json.loads((out / META).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError):
        return None


@dataclass
class _State:
    """The models, the objective, the optimiser and the counters of a pretraining in progress."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    objective: LayerObjective
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    loss_sum: float = 0.0  # since the last progress line
    loss_steps: int = 0


def _build(plan: GeneralPlan, device) -> _State:
    """Teacher (frozen, eval), the seed's student, the objective (label-free) and AdamW with linear warm-up and decay."""
    cfg = plan.cfg
    teacher = load_encoder(cfg.teacher).to(device).eval().requires_grad_(False)
    student, _ = build_student(plan.init, teacher, plan.seed, load_encoder)
    student = student.to(device).train()
    objective = plan.objective(Context(GeneralTask(plan.corpus["name"]), cfg, plan.pairs, student.config.hidden_size,
                                       teacher.config.hidden_size, student_heads=student.config.num_attention_heads,
                                       teacher_heads=teacher.config.num_attention_heads, teacher_model=teacher,
                                       seed=plan.seed, pooling=model_pooling(student),
                                       teacher_pooling=model_pooling(teacher))).to(device)
    params = [p for p in list(student.parameters()) + list(objective.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=cfg.lr, fused=fused_adamw(device))
    total, warmup = plan.total_steps, int(cfg.warmup_ratio * plan.total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    return _State(teacher, student, objective, optimizer, schedule)


def batch_positions(n_blocks: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The blocks step ``step`` trains on: batch ``step mod S`` of epoch ``step div S``'s seeded permutation."""
    per_epoch = math.ceil(n_blocks / batch_size)
    epoch, j = divmod(step, per_epoch)
    order = np.random.RandomState((seed * 1_000_003 + epoch) % 2**32).permutation(n_blocks)
    return order[j * batch_size:(j + 1) * batch_size]


def _loss(state: _State, batch: dict, autocast) -> torch.Tensor:
    needs = state.objective.needs
    with autocast():
        with torch.no_grad():
            t_out = model_outputs(state.teacher, batch, needs)
        s_out = model_outputs(state.student, batch, needs)
        return state.objective.label_free(s_out, t_out, batch).loss


def _batch(blocks: EncoderBlocks, positions, device) -> dict:
    index = torch.as_tensor(positions)
    return {"input_ids": blocks.input_ids[index].to(device), "attention_mask": blocks.attention_mask[index].to(device)}


@torch.no_grad()
def held_out_loss(state: _State, blocks: EncoderBlocks, batch_size: int, device, autocast) -> float:
    """The mean distillation loss over the held-out blocks (each batch's loss weighted by its blocks)."""
    was = state.student.training
    state.student.eval()
    state.objective.eval()
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        positions = range(start, min(start + batch_size, len(blocks)))
        total += float(_loss(state, _batch(blocks, positions, device), autocast)) * len(positions)
    state.student.train(was)
    state.objective.train(was)
    return total / len(blocks)


def _save_state(plan: GeneralPlan, state: _State) -> None:
    """The checkpoint, written beside its place and renamed (atomic)."""
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=plan.state_dir, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    torch.save({"key": plan.key, "identity": plan.identity, "step": state.step, "tokens": state.tokens,
                "seconds": state.seconds, "student": state.student.state_dict(),
                "objective": state.objective.state_dict(), "optimizer": state.optimizer.state_dict(),
                "schedule": state.schedule.state_dict(), "rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, plan.state_dir / STATE)


def _resume(plan: GeneralPlan, state: _State, device) -> bool:
    path = plan.state_dir / STATE
    if not path.is_file():
        return False
    saved = torch.load(path, map_location=device, weights_only=True)
    state.student.load_state_dict(saved["student"])
    state.objective.load_state_dict(saved["objective"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.schedule.load_state_dict(saved["schedule"])
    torch.set_rng_state(saved["rng"].cpu())
    state.step, state.tokens, state.seconds = saved["step"], saved["tokens"], saved["seconds"]
    return True


def after_step(plan: GeneralPlan, state: _State) -> None:
    """Called after every optimiser step (the checkpoint is written here): tests patch it to kill a run mid-way."""
    if state.step % plan.checkpoint_every == 0 and state.step < plan.total_steps:
        _save_state(plan, state)


def pretrain(plan: GeneralPlan, log: Callable[[str], None], command: str) -> Path:
    """Distil the plan's student (resuming from its checkpoint), score it on the held-out blocks, save it: ``OUT``."""
    if _finished_key(plan.out) == plan.key:
        log(f"{plan.out} already holds this pretraining's student (key {plan.key}): nothing to do")
        return plan.out
    cfg = plan.cfg
    torch.manual_seed(plan.seed)  # the random init and the dropout masks are part of what the seed fixes
    accelerator = make_accelerator(cfg, plan.precision)
    device = accelerator.device
    state = _build(plan, device)
    initial = held_out_loss(state, plan.held, cfg.eval_batch_size, device, accelerator.autocast)
    torch.manual_seed(plan.seed)  # the same dropout masks whether or not the initial score was measured
    if _resume(plan, state, device):
        log(f"resumed from {plan.state_dir / STATE} at step {state.step}/{plan.total_steps}")
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    started, mark = time.perf_counter() - state.seconds, state.step * 10 // plan.total_steps
    while state.step < plan.total_steps:
        batch = _batch(plan.train, batch_positions(len(plan.train), cfg.batch_size, plan.seed, state.step), device)
        loss = _loss(state, batch, accelerator.autocast)
        if not torch.isfinite(loss):
            raise UsageError(f"the distillation loss became {loss.item()} at step {state.step + 1}: lower --lr")
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        state.optimizer.step()
        state.schedule.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += int(batch["attention_mask"].sum())
        state.seconds = time.perf_counter() - started
        state.loss_sum, state.loss_steps = state.loss_sum + float(loss.detach()), state.loss_steps + 1
        if state.step * 10 // plan.total_steps > mark or state.step == plan.total_steps:  # a line every 10%
            mark = state.step * 10 // plan.total_steps
            log(f"step {state.step}/{plan.total_steps} loss={state.loss_sum / state.loss_steps:.4f} "
                f"{state.tokens / max(state.seconds, 1e-9):.0f} tokens/s")
            state.loss_sum, state.loss_steps = 0.0, 0
        after_step(plan, state)
    final = held_out_loss(state, plan.held, cfg.eval_batch_size, device, accelerator.autocast)
    log(f"held-out distillation loss: {initial:.4f} before, {final:.4f} after ({state.tokens:,} tokens, "
        f"{state.seconds:.0f} s)")
    meta = {"key": plan.key, "identity": plan.identity, "command": command, "corpus": plan.corpus,
            "held_out_loss": {"before": initial, "after": final}, "tokens_seen": state.tokens, "steps": state.step,
            "train_seconds": round(state.seconds, 1), "git_rev": git_revision(), "versions": package_versions()}
    _save_student(plan, state, meta)
    shutil.rmtree(plan.state_dir, ignore_errors=True)
    return plan.out


def _save_student(plan: GeneralPlan, state: _State, meta: dict) -> None:
    """``OUT``: the student, the teacher's tokenizer, the card and the metadata, written beside and renamed in."""
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=plan.out.parent, prefix=f".{plan.out.name}-"))
    with quiet_transformers():  # no progress bar for one file
        state.student.save_pretrained(tmp)
    load_tokenizer(plan.cfg.teacher).save_pretrained(tmp)
    (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    (tmp / CARD).write_text(card(meta, plan.out), encoding="utf-8")
    if plan.out.exists():  # a finished student of another key was refused in planning: this is a rerun's own
        shutil.rmtree(plan.out)
    os.replace(tmp, plan.out)


def card(meta: dict, out: Path) -> str:
    """The model card (README.md) of a general student: what it is, how to fine-tune and load it, where it came from."""
    i, c = meta["identity"], meta["corpus"]
    loss = meta["held_out_loss"]
    return "\n".join([
        f"# General student: {i['objective']} from {i['teacher']} ({i['init']})", "",
        f"A task-agnostic student distilled by distilbench (`distilbench pretrain`) from the pretrained teacher "
        f"`{i['teacher']}` with `{i['objective']}` at layer pairs {i['layer_map']} (student, teacher), on corpus "
        f"`{c['name']}` ({c['train_tokens']:,} training tokens in {c['train_blocks']:,} blocks of {i['max_length']}): "
        f"{meta['steps']:,} steps, {meta['tokens_seen']:,} tokens, seed {i['seed']}, {i['precision']}.", "",
        f"Held-out distillation loss ({c['held_blocks']} blocks the student never trained on): {loss['before']:.4f} "
        f"before, {loss['after']:.4f} after (lower is better).", "",
        "It has no task head. Fine-tune it on a task:", "",
        f"    distilbench run --init pretrained:{out} --teacher {i['teacher']} --task sst2 --objective kd --seeds 3", "",
        f"or load it with `transformers.AutoModel.from_pretrained(\"{out}\")` and `AutoTokenizer` from the same folder.", "",
        f"Corpus: {c['provenance']}", "",
        f"Reproduce: `{meta['command']}` (key {meta['key']}, git {meta['git_rev']}).", ""])


__all__ = ["Budget", "GeneralPlan", "after_step", "batch_positions", "card", "held_out_loss", "plan_general", "pretrain",
           "refuse_objective"]

"""Task-agnostic (general) distillation, `distilbench pretrain`: a pretrained teacher without a task head distilled into
a student on unlabelled text (paper 002 §4; DistilBERT's, TinyBERT's general stage and MiniLM's recipe), saved as a
transformers folder that `distilbench run --init pretrained:FOLDER` then fine-tunes on each task.

- **Objectives**: the intermediate-layer ones and their ``+`` combinations (att-mse, att-kl, hid-seq, hid-cls,
  hid-cls-contrast, val-kl, lwd), label-free: the loss is their (weighted) intermediate term alone
  (:meth:`~distilbench.objectives.layerwise.LayerObjective.label_free`), by default at the last layer pair
  (``--layer-map last``, as paper 002 §4 distils). Vanilla KD (and kd-reverse, gkd-jsd) distils the MLM prediction
  layer, so it needs a teacher with an MLM head (the embedded sentence encoders have none: refused, saying so):
  teacher and student are then ``AutoModelForMaskedLM``, each step masks 15% of the real non-special tokens
  (:func:`mask_tokens`: 80% become the mask token, 10% a random token, 10% stay) and the loss is ``T^2 * KL`` of the
  two MLM distributions at the masked positions (DistilBERT's soft-target term). Objectives with stages of their own
  (TED) or a team are refused: they need labels.
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

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...data.corpus import EncoderBlocks, GeneralTask
from ...errors import TrainingDiverged, UsageError
from ...models.encoders import load_encoder
from ...models.inits import build_student
from ...models.loading import load_tokenizer, quiet_transformers
from ...models.pooling import CONFIG_KEY as POOLING_KEY
from ...objectives import Context, Objective
from ...objectives.base import MLM_MASK
from ..loop.harness import save_atomic
from ..loop.outputs import model_outputs
from ..loop.parallel import fused_adamw, make_accelerator
from ..runs.provenance import git_revision, package_versions
from ..teachers.teacher import file_lock
from .general_plan import (CARD, MASK_SHARE, META, STATE, STATE_KEY, Budget, GeneralPlan, checkpoint_key, finished_key,
                           plan_general)


@dataclass
class _State:
    """The models, the objective, the optimiser and the counters of a pretraining in progress."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    objective: Objective
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
    teacher = load_encoder(cfg.teacher, plan.mlm).to(device).eval().requires_grad_(False)
    student, _ = build_student(plan.init, teacher, plan.seed, lambda name: load_encoder(name, plan.mlm))
    student = student.to(device).train()
    objective = plan.objective(Context(GeneralTask(plan.corpus["name"]), cfg, plan.pairs, student.config.hidden_size,
                                       teacher.config.hidden_size, student_heads=student.config.num_attention_heads,
                                       teacher_heads=teacher.config.num_attention_heads, teacher_model=teacher,
                                       seed=plan.seed, pooling=plan.pooling, teacher_pooling=plan.pooling)).to(device)
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


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids, mask_id: int, vocab: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: each real token that is not special is chosen with probability :data:`MASK_SHARE` (at least
    one per batch); a chosen token becomes ``mask_id`` with probability 0.8, a uniformly random id with 0.1, and stays
    with 0.1. Returns (the masked ids, the chosen positions ``[B, L]``)."""
    real = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    chosen = (torch.rand(input_ids.shape, generator=generator) < MASK_SHARE) & real
    if not chosen.any() and real.any():  # a batch with nothing to predict would have no loss
        chosen.view(-1)[int(real.view(-1).nonzero()[0])] = True
    action = torch.rand(input_ids.shape, generator=generator)
    noise = torch.randint(vocab, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    ids = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    ids = torch.where(chosen & (action >= 0.8) & (action < 0.9), noise, ids)
    return ids, chosen


def _batch(plan: GeneralPlan, blocks: EncoderBlocks, positions, device, draw: int) -> dict:
    """The blocks at ``positions``; with KD on the MLM head, masked by a generator seeded from the seed and ``draw``
    (the step, or the held-out batch), so a resumed run masks as the uninterrupted one did."""
    index = torch.as_tensor(positions)
    ids, mask = blocks.input_ids[index], blocks.attention_mask[index]
    batch = {"input_ids": ids, "attention_mask": mask}
    if plan.mlm:
        generator = torch.Generator().manual_seed((plan.seed * 1_000_003 + draw) % 2**63)
        batch["input_ids"], batch[MLM_MASK] = mask_tokens(ids, mask, plan.special_ids, plan.mask_id, plan.vocab, generator)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def held_out_loss(plan: GeneralPlan, state: _State, blocks: EncoderBlocks, batch_size: int, device, autocast) -> float:
    """The mean distillation loss over the held-out blocks (each batch's loss weighted by its blocks)."""
    was, own = state.student.training, state.objective.training
    state.student.eval()
    state.objective.eval()
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        positions = range(start, min(start + batch_size, len(blocks)))
        draw = -1 - start  # the held-out batches' masks: their own draws, the same before and after training
        total += float(_loss(state, _batch(plan, blocks, positions, device, draw), autocast)) * len(positions)
    state.student.train(was)
    state.objective.train(own)
    return total / len(blocks)


def _save_state(plan: GeneralPlan, state: _State) -> None:
    """The checkpoint, written beside its place and renamed (atomic), and its key beside it (read before any load)."""
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint_key(plan) is None:
        (plan.state_dir / STATE_KEY).write_text(json.dumps({"key": plan.key}), encoding="utf-8")
    save_atomic({"key": plan.key, "identity": plan.identity, "step": state.step, "tokens": state.tokens,
                "seconds": state.seconds, "student": state.student.state_dict(),
                "objective": state.objective.state_dict(), "optimizer": state.optimizer.state_dict(),
                "schedule": state.schedule.state_dict(), "rng": torch.get_rng_state(),
                # the current GPU's generator, where one is in use (not created for a CPU run)
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}, plan.state_dir / STATE)


def _resume(plan: GeneralPlan, state: _State, device) -> bool:
    path = plan.state_dir / STATE
    if not path.is_file():
        return False
    saved = torch.load(path, map_location=device, weights_only=True)
    if saved.get("key") != plan.key:  # planning checked the sidecar; this is the checkpoint itself
        raise UsageError(f"{path} is the checkpoint of another pretraining (key {saved.get('key')}, this one {plan.key}): "
                         "remove it or choose another --out")
    state.student.load_state_dict(saved["student"])
    state.objective.load_state_dict(saved["objective"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.schedule.load_state_dict(saved["schedule"])
    torch.set_rng_state(saved["rng"].cpu())
    if saved.get("cuda_rng") is not None and torch.cuda.is_available():  # dropout on a GPU draws from its own generator
        torch.cuda.set_rng_state(saved["cuda_rng"].cpu())
    state.step, state.tokens, state.seconds = saved["step"], saved["tokens"], saved["seconds"]
    return True


def after_step(plan: GeneralPlan, state: _State) -> None:
    """Called after every optimiser step (the checkpoint is written here): tests patch it to kill a run mid-way."""
    if state.step % plan.checkpoint_every == 0 and state.step < plan.total_steps:
        _save_state(plan, state)


def pretrain(plan: GeneralPlan, log: Callable[[str], None], command: str) -> Path:
    """Distil the plan's student (resuming from its checkpoint), score it on the held-out blocks, save it: ``OUT``.
    Under an exclusive lock (the hidden file ``.OUT.lock`` beside it): two processes asked for the same student (one
    suite started twice) train it once, and the second finds it done."""
    with file_lock(plan.out.with_name(f".{plan.out.name}.lock")):
        return _pretrain(plan, log, command)


def _pretrain(plan: GeneralPlan, log: Callable[[str], None], command: str) -> Path:
    for stale in plan.out.parent.glob(f".{plan.out.name}.saving-*"):  # a kill while saving left it: never a finished student
        shutil.rmtree(stale, ignore_errors=True)
    if finished_key(plan.out) == plan.key:
        shutil.rmtree(plan.state_dir, ignore_errors=True)  # a kill between the save and this removal left it
        log(f"{plan.out} already holds this pretraining's student (key {plan.key}): nothing to do")
        return plan.out
    cfg = plan.cfg
    torch.manual_seed(plan.seed)  # the random init and the dropout masks are part of what the seed fixes
    accelerator = make_accelerator(cfg, plan.precision)
    device = accelerator.device
    state = _build(plan, device)
    initial = held_out_loss(plan, state, plan.held, cfg.eval_batch_size, device, accelerator.autocast)
    torch.manual_seed(plan.seed)  # the same dropout masks whether or not the initial score was measured
    if _resume(plan, state, device):
        log(f"resumed from {plan.state_dir / STATE} at step {state.step}/{plan.total_steps}")
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    started, mark = time.perf_counter() - state.seconds, state.step * 10 // plan.total_steps
    while state.step < plan.total_steps:
        batch = _batch(plan, plan.train, batch_positions(len(plan.train), cfg.batch_size, plan.seed, state.step), device,
                       state.step)
        loss = _loss(state, batch, accelerator.autocast)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the distillation loss became {loss.item()} at step {state.step + 1}; lower --lr "
                                   f"(and remove {plan.state_dir}, this run's checkpoint)")
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
    final = held_out_loss(plan, state, plan.held, cfg.eval_batch_size, device, accelerator.autocast)
    log(f"held-out distillation loss: {initial:.4f} before, {final:.4f} after ({state.tokens:,} tokens, "
        f"{state.seconds:.0f} s)")
    meta = {"key": plan.key, "identity": plan.identity, "command": command, "corpus": plan.corpus,
            "held_out_loss": {"before": initial, "after": final}, "tokens_seen": state.tokens, "steps": state.step,
            "train_seconds": round(state.seconds, 1), "eval_batch_size": cfg.eval_batch_size,
            "git_rev": git_revision(), "versions": package_versions()}
    _save_student(plan, state, meta)
    shutil.rmtree(plan.state_dir, ignore_errors=True)
    return plan.out


def _save_student(plan: GeneralPlan, state: _State, meta: dict) -> None:
    """``OUT``: the student, the teacher's tokenizer, the card and the metadata, written beside and renamed in."""
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=plan.out.parent, prefix=f".{plan.out.name}.saving-"))
    setattr(state.student.config, POOLING_KEY, plan.pooling)  # a task run on it reads what it was distilled with
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
        ("It keeps the teacher's MLM head (`AutoModelForMaskedLM`); fine-tuning replaces it:" if "mlm" in i else
         "It has no task head (`AutoModel`). Fine-tune it on a task:"), "",
        f"    distilbench run --init pretrained:{out} --teacher {i['teacher']} --task sst2 --objective kd --seeds 3", "",
        f"or load it with `transformers.{'AutoModelForMaskedLM' if 'mlm' in i else 'AutoModel'}.from_pretrained(\"{out}\")` "
        "and `AutoTokenizer` from the same folder.", "",
        f"Corpus: {c['provenance']}", "",
        f"Reproduce: `{meta['command']}` (key {meta['key']}, git {meta['git_rev']}).", ""])


__all__ = ["CARD", "META", "STATE", "Budget", "GeneralPlan", "after_step", "batch_positions", "card", "held_out_loss",
           "mask_tokens", "plan_general", "pretrain"]

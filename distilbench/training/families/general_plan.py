"""Planning a task-agnostic distillation (`distilbench pretrain`, :mod:`.general`): every input checked before anything
is read or written, the corpus read and packed, and the identity whose key names the student and its checkpoint."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ...config import RunConfig, check_folder
from ...data.corpus import Corpus, EncoderBlocks, GeneralTask, pack_encoder_blocks, resolve_corpus, split_lines
from ...data.tasks import resolve_data_dir
from ...errors import UsageError
from ...hashing import stable_hash
from ...models.encoders import STUDENT_META, general_student, has_mlm_head
from ...models.inits import parse_init
from ...models.loading import declared_pooling, load_tokenizer, model_config, model_fingerprint
from ...objectives import OBJECTIVES, Objective, get_objective
from ...objectives.layerwise import PREDICTION_LAYER, PREDICTION_PART, LayerObjective, label_free, without_labels
from ..loop.precision import resolve as resolve_precision
from ..runs.pairs import distillation_pairs

META, CARD, STATE, STATE_KEY = STUDENT_META, "README.md", "state.pt", "state.json"
MASK_SHARE = 0.15  # of the real non-special tokens, masked each step (BERT's and DistilBERT's share)

# the run options a pretraining reads (besides the label-free objectives' own options, :func:`pretrain_options`)
PRETRAIN_FLAGS = ("objective", "teacher", "pooling", "init", "student_layers", "student_hidden", "layer_map", "lr", "batch_size",
                  "eval_batch_size", "max_length", "warmup_ratio", "weight_decay", "max_grad_norm", "data_dir", "cpu",
                  "mixed_precision")
# its defaults where they differ from a task run's: paper 002 §4 distils the last layer pair, at a pretraining's rate
# and batch size (`distilbench pretrain` and a suite's pretrain block alike)
PRETRAIN_DEFAULTS = {"layer_map": "last", "lr": 1e-4, "batch_size": 32}
# options of the label-free objectives that no label-free loss reads: the CE weight, the joint weight, the schedule
UNREAD_OPTIONS = ("alpha_kd", "beta", "schedule")


def pretrain_options(names) -> tuple[str, ...]:
    """Of ``names``, the options a pretraining takes: :data:`PRETRAIN_FLAGS` and the label-free objectives' own."""
    own = {o.name for n in OBJECTIVES if label_free(OBJECTIVES.get(n)) for o in OBJECTIVES.get(n).declared_options()}
    return tuple(n for n in names if n in PRETRAIN_FLAGS or (n in own and n not in UNREAD_OPTIONS))


def unread(objective: type[Objective]) -> set[str]:
    """What ``objective`` reads in a task run that its label-free loss does not (kept out of the identity): the
    prediction-layer options and schedule for a layer objective; the CE weight for KD on the MLM head; and the layer
    map's spec, whose resolved pairs the identity holds instead."""
    if issubclass(objective, LayerObjective):
        return {*PREDICTION_PART, "layer_map"}
    return {"alpha_kd", "layer_map"}


def check_counts(values: dict, name: Callable[[str], str]) -> None:
    """A pretraining's counts, as the command line or a suite's pretrain block gives them (``name``: how that source
    names a key, ``--steps`` or ``steps``): ``steps``, ``tokens``, ``checkpoint_every`` >= 1 (at most one of steps and
    tokens), ``seed`` >= 0; any other value is one line naming it."""
    def integer(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("steps", "tokens", "checkpoint_every"):
        if values.get(key) is not None and not (integer(values[key]) and values[key] >= 1):
            raise UsageError(f"{name(key)} must be a count >= 1 (got {values[key]!r})")
    if values.get("steps") is not None and values.get("tokens") is not None:
        raise UsageError(f"give {name('steps')} or {name('tokens')}, not both")
    if values.get("seed") is not None and not (integer(values["seed"]) and values["seed"] >= 0):
        raise UsageError(f"{name('seed')} must be an integer >= 0 (got {values['seed']!r})")


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
    objective: type[Objective]
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
    pooling: str = "cls"  # teacher's and student's sentence representation (hid-cls, hid-cls-contrast): the teacher's own
    mlm: bool = False  # KD on the MLM head: teacher and student keep it, and each step masks tokens
    special_ids: tuple[int, ...] = ()  # never masked
    mask_id: int | None = None
    vocab: int = 0
    identity: dict = field(default_factory=dict)
    key: str = ""

    @property
    def state_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".checkpoint")


def refuse_objective(name: str, teacher: str) -> type[Objective]:
    """The objective, or one line saying why it cannot distil without labels with this teacher (exit 2)."""
    cls = get_objective(name)
    why = without_labels(cls, has_mlm_head(teacher))
    if why is not None:
        if why == PREDICTION_LAYER:
            why += f", and teacher {teacher} has none (the embedded sentence encoders ship without one)"
        raise UsageError(f"objective {cls.name} cannot distil without labels: it {why}; task-agnostic distillation takes "
                         f"{', '.join(n for n in OBJECTIVES if label_free(OBJECTIVES.get(n)))} and the + combinations "
                         "of the layer objectives")
    return cls


def _check_inputs(cfg: RunConfig, out: str, teacher_config) -> str:
    """The settings a pretraining refuses (one line, exit 2, before anything is read or written); its precision."""
    if cfg.schedule != "joint":
        raise UsageError("--schedule sequential distils the prediction layer second; task-agnostic distillation has none")
    if cfg.init.startswith("pretrained:"):
        raise UsageError("--init pretrained:... is a task run's student; pretraining starts from random or teacher layers")
    precision = resolve_precision(cfg.mixed_precision, cfg.cpu)[0]
    if precision == "fp16":  # fp16 needs loss scaling, which this loop does not do
        raise UsageError("--mixed-precision fp16: pretraining runs in fp32 or bf16 (give --mixed-precision bf16 or no)")
    # RoBERTa-style position ids start after the padding index: two fewer usable positions
    offset = 2 if teacher_config.model_type in ("roberta", "mpnet", "xlm-roberta", "camembert") else 0
    limit = getattr(teacher_config, "max_position_embeddings", None)
    if limit is not None and cfg.max_length > limit - offset:
        raise UsageError(f"--max-length {cfg.max_length} is longer than teacher {cfg.teacher}'s {limit - offset} positions")
    check_folder("--out", out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("pretraining runs in one process (every data-parallel process would write the same --out)")
    return precision


@functools.lru_cache(maxsize=4)
def packed(corpus: Corpus, teacher: str, max_length: int, data_dir: str) -> tuple[EncoderBlocks, EncoderBlocks]:
    """The corpus's (training, held-out) blocks in the teacher's tokens: read and packed once per process (a suite's
    students share them)."""
    train_lines, held_lines = split_lines(corpus, data_dir)
    if not held_lines:
        raise UsageError(f"corpus {corpus.name} holds out no line (held_out {corpus.held_out} of {len(train_lines)} "
                         "lines): give a larger corpus")
    tokenizer = load_tokenizer(teacher)
    return pack_encoder_blocks(tokenizer, train_lines, max_length), pack_encoder_blocks(tokenizer, held_lines, max_length)


def plan_general(cfg: RunConfig, corpus: str, budget: Budget, seed: int, out: str, checkpoint_every: int) -> GeneralPlan:
    """Check every input (one line and exit 2 for the first bad one), read and pack the corpus, and the identity."""
    objective = refuse_objective(cfg.objective, cfg.teacher)
    teacher_config = model_config(cfg.teacher)
    precision = _check_inputs(cfg, out, teacher_config)
    init = parse_init(cfg.init, teacher_config.num_hidden_layers, cfg.student_layers, cfg.student_hidden,
                      getattr(teacher_config, "num_attention_heads", None))
    pairs = distillation_pairs(cfg.layer_map, init, init.num_layers, teacher_config.num_hidden_layers)
    found = resolve_corpus(corpus)
    tokenizer = load_tokenizer(cfg.teacher)
    mlm = not issubclass(objective, LayerObjective)
    if mlm and tokenizer.mask_token_id is None:
        raise UsageError(f"teacher {cfg.teacher}'s tokenizer has no mask token: KD on its MLM head needs one")
    train, held = packed(found, cfg.teacher, cfg.max_length, str(resolve_data_dir(cfg.data_dir) or Path(".")))
    plan = GeneralPlan(cfg, objective, init, pairs, train, held, {}, budget.total_steps(len(train), cfg.batch_size,
                       cfg.max_length), seed, Path(out).expanduser().resolve(), checkpoint_every, precision,
                       mlm=mlm, pooling=cfg.pooling or declared_pooling(cfg.teacher))
    plan.corpus = {"name": found.name, "version": found.version, "provenance": found.provenance,
                   "train_blocks": len(train), "train_tokens": train.tokens, "held_blocks": len(held),
                   "held_tokens": held.tokens, "data": hashlib.sha256(train.input_ids.numpy().tobytes()).hexdigest()[:16]}
    if plan.mlm:
        plan.special_ids, plan.mask_id = tuple(tokenizer.all_special_ids), tokenizer.mask_token_id
        plan.vocab = teacher_config.vocab_size
    plan.identity = _identity(plan)
    plan.key = stable_hash(plan.identity)
    _check_out(plan)
    return plan


def _identity(plan: GeneralPlan) -> dict:
    """What the student depends on (its key hashes it): a changed value makes another pretraining."""
    cfg, objective = plan.cfg, plan.objective
    identity = {"family": GeneralTask.family, "objective": objective.name, "objective_version": objective.version,
                **{k: v for k, v in objective.param_values(cfg).items() if k not in unread(objective)},
                "teacher": cfg.teacher, "teacher_fingerprint": model_fingerprint(cfg.teacher), "init": plan.init.spec,
                "layer_map": plan.pairs, "pooling": plan.pooling,
                "corpus": {k: plan.corpus[k] for k in ("name", "version", "data")}, "max_length": cfg.max_length,
                "batch_size": cfg.batch_size, "lr": cfg.lr, "warmup_ratio": cfg.warmup_ratio,
                "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm, "steps": plan.total_steps,
                "seed": plan.seed, "precision": plan.precision}
    if plan.mlm:
        identity["mlm"] = {"mask_share": MASK_SHARE, "as_mask": 0.8, "as_random": 0.1}
    return identity


def _check_out(plan: GeneralPlan) -> None:
    """``OUT`` must be new, or this pretraining's finished student; a checkpoint must be this pretraining's."""
    if plan.out.exists() and finished_key(plan.out) != plan.key:
        raise UsageError(f"--out {plan.out} exists and is not this pretraining's student: choose a new folder")
    saved = checkpoint_key(plan)
    if saved is not None and saved != plan.key:
        raise UsageError(f"{plan.state_dir} holds the checkpoint of another pretraining (key {saved}, this one "
                         f"{plan.key}): remove it or choose another --out")


def checkpoint_key(plan: GeneralPlan) -> str | None:
    """The key of the checkpoint in ``OUT.checkpoint`` (its sidecar ``state.json``, else the checkpoint's own), None
    when there is none."""
    try:
        return json.loads((plan.state_dir / STATE_KEY).read_text(encoding="utf-8"))["key"]
    except (OSError, ValueError, KeyError):
        pass
    if not (plan.state_dir / STATE).is_file():
        return None
    # a checkpoint without its sidecar (written before there was one): the key it holds
    return torch.load(plan.state_dir / STATE, map_location="cpu", weights_only=True).get("key")


def finished_key(out: Path) -> str | None:
    return (general_student(out) or {}).get("key")


__all__ = ["CARD", "MASK_SHARE", "META", "STATE", "STATE_KEY", "Budget", "GeneralPlan", "check_counts", "checkpoint_key",
           "finished_key", "plan_general", "refuse_objective", "unread"]

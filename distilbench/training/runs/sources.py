"""The teacher's side of a run: what each objective reads from its teacher(s), and where its shared stages are kept.

A frozen teacher's outputs never change, so they are computed once (logits over the whole train file; the mapped
layers' hidden states, scores and values) and read from disk by every epoch, seed and objective: the teacher then
does not run. Where no cache covers what an objective reads, the live teacher runs each step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from ...config import RunConfig
from ...data.batching import Encoded, encode, fingerprint
from ...data.lm import lm_blocks
from ...data.tasks import Example
from ...hashing import stable_hash
from ...objectives import Needs, Objective
from ..teachers import cost
from ..loop.harness import SharedStages, TeacherSource
from ..teachers.inference import TeacherInference
from .plan import Plan
from ..teachers.teacher import TeacherRecord, logits_path, split_for_teacher, teacher_logits
from ..teachers.teacher_cache import open_or_build, parts_for


@dataclass
class Encodings:
    """Tokenisation, cached per (tokenizer, examples, max length) for the life of the runner."""

    cache: dict[tuple, Encoded] = field(default_factory=dict)
    lm: bool = False  # a causal-LM task: the lines packed into blocks of max_length tokens (data.lm.lm_blocks)

    def __call__(self, tokenizer, examples: list[Example], max_length: int) -> Encoded:
        key = (tokenizer.name_or_path, len(tokenizer), fingerprint(examples), max_length)
        if key not in self.cache:
            self.cache[key] = (lm_blocks(tokenizer, examples, max_length, f"a {len(examples)}-line part of the corpus")
                               if self.lm else encode(tokenizer, examples, max_length))
        return self.cache[key]


@dataclass
class TeacherSources:
    """Builds each objective's :class:`TeacherSource` and :class:`SharedStages` for one run (``tokenizer``: the
    teacher's; ``team``: a multi-teacher objective's (record, model, tokenizer) per member)."""

    cfg: RunConfig
    plan: Plan
    tokenizer: Any
    encodings: Encodings
    inference: TeacherInference
    precision: str
    log: Callable[[str], None]
    team: list[tuple] = field(default_factory=list)

    def encode(self, tokenizer, examples: list[Example]) -> Encoded:
        return self.encodings(tokenizer, examples, self.cfg.max_length)

    def source(self, objective: Objective, record: TeacherRecord, teacher_net, own_tokens: bool,
               parts: list | None = None) -> TeacherSource | None:
        """What ``objective`` reads from its teacher(s): cached outputs where they cover it (built here, once, on
        first use), else the live teacher. ``parts`` gets the shared parts read (their cost: distilbench.training.teachers.cost)."""
        parts = [] if parts is None else parts
        if objective.multi_teacher:
            return self._team_source(objective, parts)
        if not objective.uses_teacher:
            return None
        plan, cfg = self.plan, self.cfg
        cache = outputs = None
        layers = sorted({t for _, t in plan.pairs})
        logits_only = objective.needs == Needs(logits=True, token_aligned=objective.needs.token_aligned)
        if cfg.teacher_cache != "off" and (logits_only or objective.teacher_cache):
            enc_all = self.encode(self.tokenizer, plan.teacher_read)
            tokenisation, logits, path = self.logits_cache(record, enc_all, teacher_net)
            cache = [logits]
            parts.append(cost.logits_part(record, path))
            if not logits_only:
                outputs = [open_or_build(record.path, record.key, enc_all, tokenisation, layers, parts_for(objective.needs),
                                         cfg.teacher_cache, partial(self.inference.outputs, teacher_net, objective.needs),
                                         teacher_net.config.num_hidden_layers, cfg.eval_batch_size, self.log, self.precision)]
                parts.append(cost.outputs_part(record, outputs[0].folder, outputs[0].build_s))
        return TeacherSource([teacher_net], objective.needs, cache, own_tokens, outputs, layers)

    def logits_cache(self, record: TeacherRecord, enc_all, teacher_net) -> tuple[str, Any, Any]:
        """Family hook: the teacher's logits over the whole train file (built once, then read from beside the
        teacher), as ``(tokenisation key, logits, cache file)``."""
        plan, cfg = self.plan, self.cfg
        # the teacher's key names its weights and tokenizer; hashing its folder would also hash the caches kept there
        tokenisation = f"{record.key}:{cfg.max_length}"
        compute = partial(self.inference.logits, teacher_net)
        return (tokenisation, teacher_logits(record, enc_all, plan.train_rows, compute, tokenisation, self.precision),
                logits_path(record, enc_all, plan.train_rows, tokenisation, self.precision))

    def _team_source(self, objective: Objective, parts: list) -> TeacherSource:
        """Logits only: each member's logits over the whole train file, computed once on its own tokenisation."""
        plan, cfg = self.plan, self.cfg
        caches = [teacher_logits(r, self.encode(tok, plan.teacher_read), plan.train_rows, partial(self.inference.logits, net),
                                 f"{r.key}:{cfg.max_length}", self.precision)
                  for r, net, tok in self.team]
        for r, _, tok in self.team:
            parts += [cost.teacher_part(r), cost.logits_part(r, logits_path(r, self.encode(tok, plan.teacher_read), plan.train_rows,
                                                                             f"{r.key}:{cfg.max_length}", self.precision))]
        return TeacherSource([net for _, net, _ in self.team], objective.needs, caches)

    def shared(self, objective: Objective, record: TeacherRecord, tokenizer) -> SharedStages | None:
        """Where an objective's shared stages (TED's Stage I) are trained once and kept, or None when it has none."""
        cfg, plan = self.cfg, self.plan
        if not any(stage.shared for stage in objective.stages()):
            return None
        teacher_part = split_for_teacher(cfg, plan.train_all)[0]
        return SharedStages(self.encode(tokenizer, teacher_part), cfg.teacher_seed, record.path / "stages",
                            stable_hash([record.key, fingerprint(teacher_part), plan.init.spec, cfg.max_length, cfg.batch_size]
                                        + ([self.precision] if self.precision != "fp32" else [])
                                        + ([f"processes={n}"] if (n := self.inference.accelerator.num_processes) > 1 else [])))

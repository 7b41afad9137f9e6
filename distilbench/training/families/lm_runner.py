"""`distilbench run` and `distilbench teacher` for a causal-LM task (``family: causal-lm``): the :class:`Runner` with
the parts that differ for language models, everything else (plan, store, leases, the training loop, objectives,
inits, rows) shared.

- **Teacher.** ``--teacher scratch:SIZE`` (``distilbench teacher --init random --teacher-config SIZE``) is a GPT-2
  style model of that shape, randomly initialised from ``--teacher-seed``, with a byte-level BPE tokenizer of
  ``--bpe-vocab`` tokens trained deterministically on the training text, then trained on the teacher's split of it
  (``--teacher-epochs``, ``--teacher-lr``): cached like a fine-tuned teacher, its key holding its shape and
  tokenizer. Any other teacher is a causal LM (``AutoModelForCausalLM``), fine-tuned on the training text the same way.
  Every row of a from-scratch teacher says so (``extra.lm.teacher_note``).
- **Data.** Train and selection parts are lines (the seeded selection split), each packed into full blocks of
  ``--max-length`` tokens; dev is scored by perplexity over its whole text in windows every ``--eval-stride`` tokens.
- **Teacher outputs** come from the live teacher each step (no logits cache: ``[blocks, L, V]`` is large).
- **Per-example values** (``extra.dev_predictions``): each evaluation window's mean next-token NLL in nats, with the
  tokens it scores in ``extra.dev_labels``; the signal check compares them, paired by window, with the ``none``
  student's (:mod:`distilbench.results.lm_signal`).
- **Saving** (``--save-students``): the student as an ``AutoModelForCausalLM`` folder with the run's tokenizer (a
  from-scratch teacher's BPE, padded; ``model_max_length`` = ``--max-length``) and a model card showing perplexity in
  its own units (:mod:`.export`).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ...data.batching import fingerprint, selection_split
from ...data.lm import corpus_ids, lm_blocks
from ...errors import UsageError
from ...models.inits import build_student
from ...models.loading import load_causal_lm, load_tokenizer, model_config
from ...models.scratch import SCRATCH_NOTE, is_scratch, random_causal_lm, scratch_config, scratch_spec, train_bpe
from ...objectives import Context, get_objective
from ..loop.harness import TeacherSource
from ..loop.lm import check_corpus, check_lm_run, evaluate_perplexity
from ..runs.profile import pair_profiles, row_profile
from ..runs.rows import student_row
from ..runs.runner import Runner
from ..runs.sources import Encodings
from ..teachers.inference import TeacherInference
from ..teachers.lm_topk import TopKSource, logits_only, topk_table
from ..teachers.teacher import TeacherRecord, load_teacher, record_dev_metrics, split_for_teacher


class LMTeacherInference(TeacherInference):
    """The teacher of a causal-LM run: built from scratch or loaded, then trained on the teacher's split."""

    def fine_tune(self, model_name: str, train_all):
        task, cfg = self.task, self.cfg
        train_part, select_part = split_for_teacher(cfg, train_all)
        if is_scratch(model_name):
            tokenizer = train_bpe((e.text_a for e in train_all), cfg.bpe_vocab)
            net = random_causal_lm(scratch_spec(model_name), tokenizer, seed=cfg.teacher_seed,
                                   n_positions=max(1024, cfg.max_length))
            self.log(f"  {model_name}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, "
                     f"BPE vocabulary {len(tokenizer)} trained on {len(train_all)} lines; {SCRATCH_NOTE}")
        else:
            tokenizer, net = load_tokenizer(model_name), load_causal_lm(model_name)
        if tokenizer.pad_token is None:  # GPT-2's tokenizer has none: blocks are full, the pad id only fills eval batches
            tokenizer.pad_token = tokenizer.eos_token
        train_enc = lm_blocks(tokenizer, train_part, cfg.max_length, f"task {task.name}'s teacher training part")
        select_enc = lm_blocks(tokenizer, select_part, cfg.max_length, f"task {task.name}'s teacher selection part")
        none = get_objective("none")(Context(task, cfg, [], net.config.hidden_size, None))
        result = self.trainer(net, none, None, train_enc, select_enc, seed=cfg.teacher_seed, epochs=cfg.teacher_epochs,
                              lr=cfg.teacher_lr, label=f"teacher {model_name}", micro_batch=cfg.teacher_micro_batch)
        info = {"best_epoch": result.best_epoch, "select_score": result.best_select_score, "history": result.history,
                "examples_per_s": result.examples_per_s}
        if is_scratch(model_name):
            info["from_scratch"] = {"spec": scratch_spec(model_name), "vocab": len(tokenizer), "note": SCRATCH_NOTE}
        return net, tokenizer, info


class LMRunner(Runner):
    """A :class:`Runner` for a causal-LM task (see the module docstring for what differs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._dev_ids: dict[tuple, list[int]] = {}

    def new_encodings(self):
        return Encodings(lm=True)  # the lines packed into blocks of --max-length tokens

    @classmethod
    def teacher_config(cls, cfg):
        """A from-scratch teacher's config is built from its shape (``scratch:SIZE``); any other is the model's."""
        return scratch_config(cfg.teacher, cfg.bpe_vocab) if is_scratch(cfg.teacher) else model_config(cfg.teacher)

    @classmethod
    def check_run(cls, cfg, task, teacher_config, train, dev, objectives) -> None:
        check_lm_run(task, cfg, teacher_config, train, dev, objectives,
                     cfg.init.partition(":")[2] if cfg.init.startswith("pretrained:") else None)

    def _teacher_tokenizer(self):
        return None if is_scratch(self.cfg.teacher) else self._padded(load_tokenizer(self.cfg.teacher))

    @staticmethod
    def _padded(tokenizer):
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def inference(self) -> TeacherInference:
        return LMTeacherInference(self.cfg, self.plan.task, self.accelerator, self.trainer(), self.log)

    @property
    def stride(self) -> int:
        return self.cfg.eval_stride or self.cfg.max_length

    def dev_key(self) -> str:
        return f"{fingerprint(self.plan.dev)}:lm:{self.cfg.max_length}:{self.stride}"

    def dev_ids(self, tokenizer) -> list[int]:
        key = (tokenizer.name_or_path, len(tokenizer))
        if key not in self._dev_ids:
            self._dev_ids[key] = corpus_ids(tokenizer, self.plan.dev)
        return self._dev_ids[key]

    def perplexity(self, model, tokenizer):
        return evaluate_perplexity(model, self.dev_ids(tokenizer), self.cfg.max_length, self.stride,
                                   self.cfg.eval_batch_size, tokenizer.pad_token_id or 0,
                                   where=f"task {self.plan.task.name}'s dev split")

    def teacher(self, name: str | None = None) -> TeacherRecord:
        cfg, task = self.cfg, self.plan.task
        name = name or cfg.teacher
        record = self.ensured_teacher(name, self.plan.train_all)
        self.tokenizer = self._padded(load_tokenizer(str(record.path)))
        check_corpus(task, self.tokenizer, {"train": self.plan.train_all, **({"dev": self.plan.dev} if self.plan.dev else {})},
                     cfg.max_length)  # a from-scratch teacher's tokenizer exists only now
        record.meta["majority"] = None  # no majority class: the signal check is against the `none` student
        note = f" ({SCRATCH_NOTE})" if is_scratch(name) else ""
        if self.plan.dev is None:
            self.log(f"teacher {name} on {task.name}: selection perplexity = {record.meta['select_score']:.2f}{note}")
            return record
        if record.dev_metrics(self.dev_key()) is None:
            score = self.perplexity(load_teacher(record, task), self.tokenizer)
            record_dev_metrics(record, self.dev_key(), score.as_metrics())
        metrics = record.dev_metrics(self.dev_key())
        self.log(f"teacher {name} on {task.name} dev: perplexity = {metrics['score']:.2f} (lower is better; "
                 f"windows of {cfg.max_length} every {self.stride} tokens){note}")
        return record

    def identity(self, objective, record, seed, team=None) -> dict:
        identity = super().identity(objective, record, seed, team)
        if self.cfg.eval_stride is not None:  # a sliding window measures another perplexity; absent by default
            identity["eval_stride"] = self.stride
        if self.cfg.teacher_topk and logits_only(objective):  # an approximate teacher: another cell
            identity["teacher_topk"] = self.cfg.teacher_topk
        return identity

    def _new_student(self, seed, teacher_net):
        return build_student(self.plan.init, teacher_net, seed, lambda name: load_causal_lm(name))

    def _teacher_source(self, objective, record, teacher_net, own_tokens: bool, parts: list | None = None):
        """The live teacher each step (no cache for token logits); none for an objective that reads no teacher."""
        if not objective.uses_teacher:
            return None
        if own_tokens:
            raise UsageError(f"objective {objective.name}: teacher and student tokenizers differ")
        if self.cfg.teacher_topk and logits_only(objective):  # the top-k cache of this seed's training blocks
            train_part = selection_split(self.plan.train_all, self.cfg.selection_fraction, objective.ctx.seed)[0]
            start = time.perf_counter()
            table = topk_table(record, self._encode(self.tokenizer, train_part), teacher_net, self.cfg.teacher_topk,
                               self.cfg.temperature, self.cfg.eval_batch_size, self.accelerator, self.log)
            self.timings["caches"] += time.perf_counter() - start
            return TopKSource(teacher_net, objective.needs, table)
        return TeacherSource([teacher_net], objective.needs, layers=sorted({t for _, t in self.plan.pairs}))

    def _build(self, objective_cls, seed, teacher_net, log: bool = True):
        student, tokenizer, objective, mapping, multi = super()._build(objective_cls, seed, teacher_net, log)
        return student, self._padded(tokenizer), objective, mapping, multi

    def run_one(self, objective_cls, seed, identity, key, record, teacher_net) -> dict:
        """Train one seed (:meth:`fit`), then its dev perplexity, per window: its row."""
        plan, cfg, task = self.plan, self.cfg, self.plan.task
        fit = self.fit(objective_cls, seed, record, teacher_net)
        score = self.perplexity(fit.student, fit.tokenizer)
        dev_metrics = score.as_metrics()
        teacher_metrics = record.dev_metrics(self.dev_key())
        self.log(f"{fit.label}: dev perplexity = {score.perplexity:.2f} (best epoch {fit.result.best_epoch}, "
                 f"{fit.result.examples_per_s:.1f} blocks/s)")
        profile = None
        if self.accelerator.is_main_process:
            models = pair_profiles(fit.student, teacher_net, torch.get_num_threads(), self.log)
            profile = row_profile(*models, dev_metrics["score"], teacher_metrics["score"], False, fit.spent)
        per_window = np.array(score.window_nll) / np.maximum(1, np.array(score.window_tokens))
        row = student_row(cfg, plan, fit, key=key, identity=identity, seed=seed, record=record, dev_metrics=dev_metrics,
                          teacher_metrics=teacher_metrics, dev_preds=per_window, dev_labels=np.array(score.window_tokens),
                          precision=self.precision, device=str(self.accelerator.device), profile=profile)
        extra = row["extra"]
        extra["dev_predictions"] = [round(float(x), 6) for x in per_window]
        extra["dev_labels"] = [int(x) for x in score.window_tokens]
        extra["lm"] = {"eval_stride": score.stride, "eval_max_length": score.max_length, "windows": score.windows,
                       "tokens": score.tokens, "higher_is_better": False,
                       "per_example": "dev_predictions: each evaluation window's mean next-token NLL (nats); "
                                      "dev_labels: the tokens it scores",
                       "from_scratch_teacher": is_scratch(cfg.teacher),
                       "teacher_note": SCRATCH_NOTE if is_scratch(cfg.teacher) else None,
                       "data_note": task.provenance}
        self.keep_student(fit, None, cfg.max_length, row)  # the run's tokenizer (a from-scratch teacher's BPE, padded)
        return row


__all__ = ["LMRunner", "LMTeacherInference"]

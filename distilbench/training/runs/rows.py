"""A trained seed's stored row: what :meth:`Runner.fit` produced (:class:`FitResult`) plus its dev predictions,
assembled into the dict :class:`distilbench.results.store.ResultsStore` keeps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ...config import RunConfig
from ...hashing import stable_hash
from ...models.encoders import general_student
from ...models.loading import declared_pooling
from ...objectives import Objective
from ..loop.harness import TrainResult
from .plan import Plan, run_settings
from ..loop.precision import cpu_info
from .provenance import code_fingerprint, git_revision, package_versions
from ..teachers.teacher import TeacherRecord


@dataclass
class FitResult:
    """One seed of one objective trained on the selection split (:meth:`Runner.fit`): dev not touched yet."""

    student: nn.Module
    tokenizer: Any
    objective: Objective
    result: TrainResult  # the kept training (an objective's chosen candidate, when it retrains candidates)
    mapping: list[str]  # how the student was initialised (layers copied), one line each
    multi: bool  # a multi-teacher objective: the team's best dev score is the teacher score
    label: str  # "kd seed 0": how log lines name this run
    spent: dict[str, Any]  # the seconds it spent itself, and the shared parts it used (distilbench.training.teachers.cost)


def student_row(cfg: RunConfig, plan: Plan, fit: FitResult, *, key: str, identity: dict, seed: int, record: TeacherRecord,
                dev_metrics: dict, teacher_metrics: dict, dev_preds: np.ndarray, dev_labels: np.ndarray,
                precision: str, device: str, profile: dict | None, family_extra: dict | None = None) -> dict:
    """The row stored for one (objective, seed) run: its identity, dev scores, the teacher's, and what to report.
    ``family_extra``: the task family's own fields, joined to ``extra``; with ``per_example`` set (extractive QA,
    :func:`distilbench.training.families.qa_run.dev_results`) ``dev_preds`` are per-example scores (the questions' F1) and
    ``dev_labels`` the examples' ids."""
    task, objective, result = plan.task, fit.objective, fit.result
    scores = bool(family_extra and family_extra.get("per_example"))
    return {"run_key": key, "kind": "student", "task": task.name, "task_version": task.version, "objective": objective.name,
            "objective_version": objective.version, "init": plan.init.spec, "teacher": cfg.teacher,
            "student": identity["student"], "seed": seed, "config_hash": stable_hash({k: v for k, v in identity.items() if k != "seed"}),
            "score": dev_metrics["score"], "teacher_score": teacher_metrics["score"], "metrics": dev_metrics,
            "params": identity, "wall_time_s": result.train_time_s, "examples_per_s": result.examples_per_s,
            "peak_mem_mb": result.peak_mem_mb, "git_rev": git_revision(), "versions": package_versions(),
            "extra": {"layer_mapping": fit.mapping, "best_epoch": result.best_epoch, "history": result.history,
                      "select_score": result.best_select_score, "teacher_key": record.key,
                      "teacher_dev": teacher_metrics, "majority": record.meta.get("majority"),
                      "settings": run_settings(cfg, precision),  # what the table titles must say (cut-down data, ...)
                      "precision": precision,
                      "code_fingerprint": code_fingerprint(),  # the training path's code (claims flag cells that differ)
                      # the processor: the same code and configuration train to other numbers on another CPU
                      "machine": machine(),
                      # the student's sentence representation (sentence tasks; None for QA and causal LM): rows stored
                      # before it was recorded used first-token heads (report.format.pooling_of reads them as cls)
                      "pooling": plan.pooling, "reads_sentence": type(objective).reads_sentence,
                      "teacher_declared_pooling": declared_pooling(cfg.teacher) if plan.pooling else None,
                      # a general student's pretraining (`distilbench pretrain`), when the init is one: the report says
                      # how each such init was made
                      "general_student": general_student(plan.init.pretrained) if plan.init.pretrained else None,
                      "device": device, "main_score": task.main_score, "team": plan.team if fit.multi else None,
                      "stage_times_s": result.stage_times, "objective_report": objective.report(),
                      "student_params": sum(p.numel() for p in fit.student.parameters()),
                      # size, speed, retained share and training cost (distilbench.training.runs.profile, distilbench.training.teachers.cost)
                      "profile": profile,
                      # per-example dev predictions and labels in dev order: what the per-example paired tests
                      # (McNemar, bootstrap over examples: distilbench.results.per_example) between two runs need
                      "dev_predictions": _per_example(dev_preds, task.regression or scores),
                      "dev_labels": list(dev_labels) if scores else _per_example(dev_labels, task.regression),
                      **(family_extra or {})}}


def machine() -> dict[str, Any]:
    model, flags = cpu_info()
    return {"cpu": model, "avx512": "avx512f" in flags, "amx": "amx_tile" in flags}


def _per_example(values, regression: bool) -> list:
    """Class ids as ints; regression scores rounded to 6 digits (JSON stays small, the metrics do not move)."""
    return [round(float(x), 6) for x in values] if regression else [int(x) for x in values]

"""Test-only references for AutoSKD's core (paper 003): Algorithm 1's phase rule, §3.2's fifty-fifty split and one
iteration of Algorithm 1's loops, written out in one function each. The objective ``autoskd`` runs the same maths
through the harness's stages (``distilbench.objectives.autoskd``); these stay here, where the tests check them against
hand computations, so the package holds only what the objective runs."""
from __future__ import annotations

from typing import Literal, Mapping

import torch
from torch import Tensor, nn

from distilbench.objectives.autoskd.core import (CategoricalTeachers, Mode, TeacherLogits, _forward, _teacher,
                                                 batch_loss_fn, distill_loss, lookahead_theta_grad, theta_step)


def phase_of(step: int, total_steps: int) -> int:
    """Algorithm 1: phase 1 while ``step < N/2``, phase 2 for ``N/2 ≤ step < N`` (0-based steps)."""
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    return 1 if step < total_steps / 2 else 2


def split_distill_val(n_examples: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """§3.2: "the original training set is split fifty-fifty" into a distillation subset (student, Eq. 3) and a
    validation subset (θ, Eq. 7). A seeded random permutation; the distillation half gets the odd example."""
    perm = torch.randperm(n_examples, generator=generator)
    half = (n_examples + 1) // 2
    return perm[:half].sort().values, perm[half:].sort().values


def search_step(student: nn.Module, student_optimizer: torch.optim.Optimizer, teachers: CategoricalTeachers,
                theta_optimizer: torch.optim.Optimizer, train_inputs: Tensor | Mapping[str, Tensor],
                train_teachers: TeacherLogits, val_inputs: Tensor | Mapping[str, Tensor], val_teachers: TeacherLogits,
                xi: float, mode: Mode = "sswo", generator: torch.Generator | None = None,
                method: Literal["exact", "finite_difference"] = "exact", temperature: float = 1.0,
                kind: Literal["soft_ce", "kl"] = "soft_ce") -> dict:
    """One iteration of Algorithm 1's loops: draw ``i ~ Cat(θ)``; update θ by Eq. 7 (SSWO) or Eq. 5 (CR) on the
    validation batch; then update w by Eq. 3 with teacher ``i`` (logits scaled by the updated θ_i) on the
    distillation batch. Both CR and SSWO distil the student with the sampled teacher, as Algorithm 1 prescribes Eq. 3
    for either; CR only changes θ's objective. The loss is the paper's (no hard-label term); for more, compose
    :func:`batch_loss_fn`, :func:`lookahead_theta_grad` and :func:`theta_step` directly.
    Returns ``{"teacher", "theta_grad", "loss"}``."""
    loss_kw = {"temperature": temperature, "kind": kind}
    i = teachers.sample(generator)
    train_fn = batch_loss_fn(student, train_inputs, train_teachers, mode, i, teachers.active, **loss_kw)
    val_fn = batch_loss_fn(student, val_inputs, val_teachers, mode, i, teachers.active, **loss_kw)
    grad = lookahead_theta_grad(student, teachers, train_fn, val_fn, xi, mode, i, method)
    theta_step(theta_optimizer, teachers, grad, mode, i)
    student_optimizer.zero_grad(set_to_none=True)
    logits = _forward(student, dict(student.named_parameters()), train_inputs)
    loss = distill_loss(logits, _teacher(train_teachers, i).detach(), teachers.theta.detach()[i], **loss_kw)
    loss.backward()
    student_optimizer.step()
    return {"teacher": i, "theta_grad": grad, "loss": float(loss.detach())}

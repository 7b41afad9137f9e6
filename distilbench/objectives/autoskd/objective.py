"""Multi-teacher objectives of AutoSKDBERT (paper 003): ``autoskd``, and the baselines it is compared with, ``skd``
(stochastic KD with a fixed categorical distribution: uniform, random, or given) and ``avgkd`` (the teachers' averaged
logits). Single-teacher KD from each teacher is ``kd --teacher NAME``.

The maths (Eq. 3–8, SSWO, CR, the one-step look-ahead, candidates) lives in :mod:`distilbench.objectives.autoskd.core`; these modules
only connect it to the harness's hooks: ``choose_teacher`` draws ``i ~ Cat(θ)`` (only teacher ``i``'s outputs are
fetched), ``outer_step`` updates θ on a batch of the validation subset (``Stage(holdout=0.5)``: §3.2 splits train
fifty-fifty), and ``candidates`` hands the phase-2 snapshots of θ to the runner, which retrains a fresh student with
each (Eq. 3, full training split) and keeps the best on the selection split, never on dev.

``L_d`` (the paper does not write it out; its student and evaluation are TinyBERT's prediction-layer distillation):
``L_d(θ_i z_T, z_S) = −Σ_c softmax(θ_i z_T)_c log softmax(z_S)_c``, batch mean, t = 1, no hard-label term.
"""
from __future__ import annotations

import math

import torch

from ...data.batching import MODEL_INPUTS
from ...errors import UsageError
from ...options import Option
from . import core as A
from ..base import Context, LossOutput, Needs, Objective, Outputs, Stage, StepContext, register_objective


def parse_theta(spec: str, n: int, seed: int) -> torch.Tensor:
    """``uniform`` | ``random`` (flat Dirichlet, drawn from the run's seed: the paper's random-distribution baseline,
    §4.3) | explicit weights ``0.5,0.3,0.2`` (normalised)."""
    if spec == "uniform":
        return A.uniform_distribution(n, torch.float32)
    if spec == "random":
        return A.random_distribution(n, torch.Generator().manual_seed(1_000 + seed)).float()
    try:
        values = [float(x) for x in spec.split(",")]
    except ValueError:
        values = []
    if len(values) != n or min(values, default=-1) < 0 or sum(values) <= 0:
        raise UsageError(f"--theta-init must be uniform, random or {n} non-negative weights like "
                         f"{','.join(['0.5'] + ['0.25'] * (n - 1)) if n > 1 else '1'} (got {spec!r})")
    return torch.tensor(values) / sum(values)


GROUP = "AutoSKD"  # the `--help` section of their options


class _Team(Objective):
    needs = Needs()  # logits only: every teacher is served from its logits cache, each on its own tokenisation
    multi_teacher = True
    reads = ("teachers",)  # the team (--teachers)
    option_groups = {GROUP: "only for --objective autoskd and skd: how a teacher is drawn from the team (AutoSKDBERT)"}

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.n = ctx.num_teachers
        if self.task.regression:
            raise UsageError(f"{self.name} distils class distributions; {self.task.name} is a regression task (the paper leaves STS-B out)")

    @staticmethod
    def ld(student: Outputs, teacher_logits: torch.Tensor, theta_i: float | torch.Tensor) -> torch.Tensor:
        return A.distill_loss(student.logits.float(), teacher_logits.detach().float(), theta_i)


@register_objective("skd")
class SKD(_Team):
    """Stochastic KD with a fixed categorical distribution (paper 003, Eq. 3): each step draws one teacher
    ``i ~ Cat(θ)`` and trains the student on ``L_d(θ_i · f_{T_i}(x), f_S(x; w))``. ``--theta-init uniform`` is uniform
    stochastic KD; ``random`` is the paper's random-distribution baseline (§4.3); explicit weights fix θ."""

    version = "1.0"
    paper = "AutoSKDBERT Eq. 3 with a fixed Cat(theta): uniform, random (the paper's baseline) or given weights"
    options = (Option("theta_init", str, "uniform", "skd: the fixed distribution: uniform | random (drawn from the seed; "
                      "the paper's random baseline) | weights like 0.5,0.3,0.2.", GROUP),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.register_buffer("theta", parse_theta(ctx.config.theta_init, self.n, ctx.seed))
        self.sampled = 0
        self.draws = [0] * self.n

    def choose_teacher(self, step: int, total_steps: int) -> int:
        self.sampled = int(torch.multinomial(self.theta.float().cpu(), 1).item())  # the run's seeded RNG
        self.draws[self.sampled] += 1
        return self.sampled

    def forward(self, student: Outputs, teacher: Outputs | None, batch, stage: Stage) -> LossOutput:
        loss = self.ld(student, teacher.logits, self.theta[self.sampled])
        return LossOutput(loss, {"ld": loss.detach()})

    def report(self) -> dict:
        return {"theta": [round(float(x), 6) for x in self.theta], "draws": list(self.draws),
                "team": [t.get("name") for t in self.ctx.team]}


@register_objective("avgkd")
class AvgKD(_Team):
    """AvgKD, the multi-teacher baseline of paper 003 (§4): every step, the student learns from the uniform average of
    all teachers' logits, ``L_d((1/n) Σ_i f_{T_i}(x), f_S(x; w))`` — Eq. 4's continuous relaxation at uniform θ."""

    version = "1.0"
    paper = "AutoSKDBERT's AvgKD baseline: L_d against the mean of all teachers' logits"

    def choose_teacher(self, step: int, total_steps: int) -> list[int]:
        return list(range(self.n))

    def forward(self, student: Outputs, teacher: list[Outputs] | None, batch, stage: Stage) -> LossOutput:
        theta = A.uniform_distribution(self.n, torch.float32).to(student.logits.device)
        loss = self.ld(student, A.cr_mixture(theta, [t.logits.float() for t in teacher]), 1.0)
        return LossOutput(loss, {"ld": loss.detach()})


@register_objective("autoskd")
class AutoSKD(_Team):
    """AutoSKD (paper 003, Algorithm 1). Search: the training split is halved (§3.2) into a distillation subset
    (student, Eq. 3) and a validation subset (θ). Each step draws ``i ~ Cat(θ)``, updates θ by the one-step
    look-ahead ``∇_θ L_val(w − ξ∇_w L_train(w, θ), θ)`` — SSWO (Eq. 6–7: only θ_i moves) or CR (Eq. 4–5) — with
    Adam (weight decay 1e-3, ``--theta-lr``), then updates w by Eq. 3 with teacher i. At half the steps the ``m``
    smallest weights are masked and the rest renormalised (Eq. 8, p = 1, ε = 1e-12); phase 2 records θ after each step
    and ``--candidates K`` snapshots (ends of K equal segments of phase 2) are retrained from scratch on the whole
    training split; the best on the selection split is the result.

    ``--autoskd-m`` defaults to Appendix A.1's rule of thumb with parameter count as the capacity measure: teachers
    no larger than the student are weak (a truncated copy of the student's architecture counts), capped at n − 1.
    ``--autoskd-lookahead``: ``finite-difference`` (DARTS's approximation of the second-order term, default),
    ``exact`` (autograd through the inner step), ``first-order`` (ξ = 0). ξ is the student's learning rate (DARTS).
    The look-ahead runs the student in eval mode (dropout would make L_train and L_val different functions).
    """

    version = "1.0"
    paper = "AutoSKDBERT (Alg. 1): teacher ~ Cat(theta), theta by SSWO/CR look-ahead, Eq. 8 selection, candidates"
    options = (
        Option("theta_update", str, "sswo", "autoskd: how theta learns: sswo (only the sampled teacher's weight, "
               "AutoSKDBERT Eq. 7) | cr (continuous relaxation, Eq. 5).", GROUP, choices=("sswo", "cr")),
        Option("theta_lr", float, 3e-4, "autoskd: Adam learning rate of theta (weight decay 1e-3; the paper's range 3e-4 .. "
               "1e-3).", GROUP, low=0.0, low_open=True, search=("float", 3e-4, 1e-3, "log")),  # the paper's (Appendix E)
        Option("autoskd_m", int | None, None, "autoskd: teachers discarded between the phases (Eq. 8); default: those no "
               "larger than the student (Appendix A.1's rule of thumb).", GROUP, low=0),
        Option("candidates", int, 2, "autoskd: candidate distributions from phase 2, each retrained from scratch, best on the "
               "selection split (the paper used 25).", GROUP, low=1),
        Option("autoskd_lookahead", str, "finite-difference", "autoskd: theta's look-ahead gradient: finite-difference "
               "(DARTS) | exact (second order) | first-order.", GROUP, choices=("finite-difference", "exact", "first-order")),
    )
    data_parallel = False  # θ learns from each process's own batch: processes would drift apart

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        if self.n < 2:
            raise UsageError("autoskd needs a team of at least 2 teachers (--teachers A,B,...)")
        cfg = ctx.config
        self.cat = A.CategoricalTeachers(self.n)
        self.cat.theta.requires_grad_(False)  # θ is learned by its own optimiser in outer_step, never by the student's
        self.m = cfg.autoskd_m if cfg.autoskd_m is not None else self.rule_of_thumb_m(ctx)
        if not 0 <= self.m < self.n:
            raise UsageError(f"--autoskd-m must be in 0..{self.n - 1} for a team of {self.n} (got {self.m})")
        self.mode = "search"
        self.sampled = 0
        self.theta_opt = None
        self.phase1: list[float] | None = None
        self.dropped: list[int] = []
        self.history: list[torch.Tensor] = []  # θ after each phase-2 step
        self.cands: list[torch.Tensor] = []
        self.cand_scores: dict[int, float] = {}
        self.fixed: torch.Tensor | None = None
        self.draws = [0] * self.n

    @staticmethod
    def rule_of_thumb_m(ctx: Context) -> int:
        sizes = [t.get("params", 0) for t in ctx.team]
        if not sizes or ctx.student_params is None:
            return 0
        return A.default_m(sizes, ctx.student_params, [s <= ctx.student_params for s in sizes])

    def stages(self) -> list[Stage]:
        if self.mode == "search":
            return [Stage("search", holdout=0.5)]
        return [Stage("distil")]

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "search":
            self.theta_opt = A.make_theta_optimizer(self.cat, lr=self.ctx.config.theta_lr)

    def choose_teacher(self, step: int, total_steps: int) -> int:
        theta = self.fixed if self.mode != "search" else self.cat.probs()
        if self.mode == "search" and step == math.ceil(total_steps / 2) and self.phase1 is None:
            self.phase1 = [float(x) for x in self.cat.probs()]  # end of phase 1 (Algorithm 1)
            self.dropped = self.cat.mask_smallest(self.m) if self.m else []  # Eq. 8
            theta = self.cat.probs()
        self.sampled = int(torch.multinomial(theta.float().cpu(), 1).item())
        self.draws[self.sampled] += 1
        return self.sampled

    def outer_step(self, ctx: StepContext) -> dict[str, float]:
        if self.mode != "search":
            return {}
        cfg, i = self.ctx.config, self.sampled
        val = ctx.holdout()
        student = ctx.student
        was_training = student.training
        student.eval()
        try:
            mode = cfg.theta_update
            active = self.cat.active
            def train_teacher(j: int) -> torch.Tensor:  # this step's teacher already ran on this batch: reuse it
                return (ctx.outputs if j == ctx.chosen else ctx.teacher(ctx.batch, j)).logits.float()

            train_fn = A.batch_loss_fn(student, self._inputs(ctx.batch), train_teacher, mode, i, active)
            val_fn = A.batch_loss_fn(student, self._inputs(val), lambda j: ctx.teacher(val, j).logits.float(), mode, i, active)
            method = {"finite-difference": "finite_difference", "exact": "exact", "first-order": "exact"}[cfg.autoskd_lookahead]
            xi = 0.0 if cfg.autoskd_lookahead == "first-order" else cfg.lr
            grad = A.lookahead_theta_grad(student, self.cat, train_fn, val_fn, xi, mode, i, method)
            A.theta_step(self.theta_opt, self.cat, grad, mode, i)
        finally:
            student.train(was_training)
        if self.phase1 is not None:
            self.history.append(self.cat.probs())
        return {"theta_sampled": float(self.cat.theta[i])}

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    def forward(self, student: Outputs, teacher: Outputs | None, batch, stage: Stage) -> LossOutput:
        theta = self.fixed if self.mode != "search" else self.cat.theta.detach()
        loss = self.ld(student, teacher.logits, theta[self.sampled].to(student.logits.device))  # θ_i after this step's update
        return LossOutput(loss, {"ld": loss.detach()})

    def candidates(self) -> list[torch.Tensor]:
        if self.mode != "search" or not self.history:
            return []
        k = min(self.ctx.config.candidates, len(self.history))
        unique: list[torch.Tensor] = []
        for c in A.candidate_distributions(self.history, k):  # identical snapshots would retrain the same student
            if not any(torch.allclose(c, u, atol=1e-6) for u in unique):
                unique.append(c)
        self.cands = unique
        return unique

    def use_candidate(self, index: int, candidate: torch.Tensor) -> None:
        self.mode, self.fixed = "retrain", candidate.detach().clone()

    def candidate_done(self, index: int, select_score: float) -> None:
        self.cand_scores[index] = select_score

    def summary(self) -> str | None:
        rep = self.report()
        if rep["theta_phase1"] is None:
            return None
        names = rep["team"]

        def fmt(theta):
            return ", ".join(f"{n} {float(x):.3f}" for n, x in zip(names, theta))

        lines = [f"θ after phase 1: {fmt(rep['theta_phase1'])}",
                 f"Eq. 8 drops m={rep['m']}: {', '.join(map(str, rep['dropped'])) or 'none'}; θ after phase 2: {fmt(rep['theta_phase2'])}"]
        for k, (c, sc) in enumerate(zip(rep["candidates"], rep["candidate_select_scores"])):
            mark = "  <- chosen" if k == rep["chosen_candidate"] else ""
            lines.append(f"candidate {k + 1}: {fmt(c)}; selection score {100 * sc:.2f}{mark}" if sc is not None else f"candidate {k + 1}: {fmt(c)}")
        lines.append(f"teacher draws (search and retraining): {fmt(rep['draws']).replace('.000', '')}")
        return "\n".join(lines)

    def report(self) -> dict:
        names = [t.get("name") for t in self.ctx.team]
        chosen = max(self.cand_scores, key=lambda k: (self.cand_scores[k], -k)) if self.cand_scores else None
        return {"team": names, "m": self.m, "dropped": [names[j] if j < len(names) else j for j in self.dropped],
                "theta_phase1": self.phase1, "theta_phase2": [round(float(x), 6) for x in self.cat.probs()],
                "candidates": [[round(float(x), 6) for x in c] for c in self.cands],
                "candidate_select_scores": [self.cand_scores.get(k) for k in range(len(self.cands))],
                "chosen_candidate": chosen,
                "theta": [round(float(x), 6) for x in self.cands[chosen]] if chosen is not None else None,
                "draws": list(self.draws), "theta_update": self.ctx.config.theta_update}

"""The mathematical core of AutoSKD (paper 003, "AutoSKDBERT: Learn to Stochastically Distill BERT").

A student ``S`` (weights ``w``) learns from a team of ``n`` teachers ``T_1..T_n``. Each step one teacher is drawn
from a categorical distribution ``Cat(θ)`` (``θ_i ≥ 0``, ``Σ θ_i = 1``, ``p(T_i) = θ_i``, §2.1), and ``θ`` itself is
learned by a DARTS-style one-step look-ahead on a held-out validation subset (§2.2, §2.4). Equation numbers below
follow the paper:

- Eq. 1  ``L(w) = Σ_x L_d(f_T(x), f_S(x; w))`` with ``T ~ Cat(θ)``.
- Eq. 2  bilevel problem ``min_θ L_val(w*(θ), θ)  s.t.  w*(θ) = argmin_w L_train(w, θ)``.
- Eq. 3  student distillation with the sampled teacher, its logits scaled by its own weight:
         ``L(w) = Σ_x L_d(θ_i · f_{T_i}(x), f_S(x; w))``, ``i ~ Cat(θ)``  -> :func:`distill_loss`.
- Eq. 4  continuous relaxation (CR): ``f_{T_1:n}(x; θ) = Σ_i θ_i f_{T_i}(x)``  -> :func:`cr_mixture`.
- Eq. 5  one-step look-ahead: ``∇_θ L_val(w*(θ), θ) ≈ ∇_θ L_val(w − ξ ∇_w L_train(w, θ), θ)``
         -> :func:`lookahead_theta_grad`.
- Eq. 6  SSWO objective: Eq. 3 with the single sampled weight ``θ̃ = θ_i`` as the only θ the loss sees.
- Eq. 7  SSWO gradient: Eq. 5 with ``θ̃`` in place of ``θ``; only the sampled weight is updated
         -> :func:`lookahead_theta_grad` (``mode="sswo"``) + :func:`theta_step`.
- Eq. 8  teacher selection between the two phases:
         ``θ⁽²⁾ = θ⁽¹⁾ ⊙ mask / max(‖θ⁽¹⁾ ⊙ mask‖_p, ε)``, mask zeroes the ``m`` smallest weights, ``p = 1``,
         ``ε = 1e-12``  -> :meth:`CategoricalTeachers.mask_smallest`.
- Algorithm 1: steps ``n < N/2`` are phase 1, ``N/2 ≤ n < N`` phase 2, teacher selection (Eq. 8) in between; each
  step first updates θ (Eq. 7), then w (Eq. 3)  -> the objective ``autoskd`` (:mod:`.objective`) with the harness's
  stages; a one-function reference of the loop body is kept with the tests (``tests/autoskd_reference.py``).

Design decisions (the paper leaves these open; each is documented where it is implemented):

- **θ parametrisation.** The paper optimises the weights θ *directly* with Adam (weight decay 1e-3, §3.2), not
  logits of a softmax. :class:`CategoricalTeachers` therefore holds θ itself as the parameter and, after every
  optimiser step, projects it back onto the simplex with the paper's own normaliser (Eq. 8's ``max(‖·‖_1, ε)``)
  after clamping at ``min_weight`` (0 by default) and zeroing discarded teachers. Between steps the parameter *is*
  the distribution. A softmax parametrisation was rejected: with it, a gradient on ``θ_i`` alone does not exist (every
  logit moves every probability), so SSWO's "update only the sampled weight" could not be expressed.
- **What SSWO touches.** The SSWO loss depends on ``θ_i`` only, so its θ-gradient is one-hot. Adam would still move
  the other coordinates (momentum from earlier steps, coupled weight decay), so :func:`theta_step` restores every
  non-sampled coordinate of the parameter *and* of the optimiser's per-coordinate state after the step: a lazy
  ("sparse") Adam in which only the sampled coordinate's moments advance. The renormalisation afterwards rescales all
  weights by one common factor, so the *ratios* between non-sampled teachers are unchanged.
- **L_d.** The paper never writes ``L_d`` out; its evaluation is "prediction-layer distillation" of a TinyBERT6
  student (Appendix C.3, F), and its baseline drops the task loss (Appendix H). :func:`distill_loss` is TinyBERT's
  prediction-layer soft cross-entropy ``−Σ_c softmax(θ_i z_T / t)_c log softmax(z_S / t)_c`` (batch mean, t = 1 by
  default, no T² factor), with optional KL form and optional hard-label CE term (weight 0 by default).
- **L_val** is the same distillation loss on a batch of the validation subset (§2.2: "both L_train and L_val are
  determined by Cat(θ) and by w"), with the *same* sampled teacher under SSWO.
- **Candidates** (§3.2, Appendix B.3): the 25 candidates are θ snapshots taken at the ends of 25 equal segments of
  phase 2 (on CIFAR-100: "the later 25 epochs deliver 25 candidates", one per epoch) -> :func:`candidate_distributions`.
- **m** (Appendix A.1): the number of teachers weaker than the student, the student's own copy counting as weak
  -> :func:`default_m`.

Classification only (the paper leaves STS-B out). Nothing here touches the harness: the objectives in
:mod:`distilbench.objectives.autoskd.objective` connect it to the harness's hooks.
"""
from __future__ import annotations

import math
from typing import Callable, Literal, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Mode = Literal["sswo", "cr"]
Params = dict[str, Tensor]
LossFn = Callable[[Params, Tensor], Tensor]  # (student parameters, θ) -> scalar loss
TeacherLogits = Union[Sequence[Tensor], Callable[[int], Tensor]]  # per-teacher logits, or a lazy provider

EPS = 1e-12  # Eq. 8's ε
P_NORM = 1  # Eq. 8's p


def _normalise(x: Tensor, p: float = P_NORM, eps: float = EPS) -> Tensor:
    """Eq. 8's normaliser ``x / max(‖x‖_p, ε)`` (exactly ``F.normalize(x, p, dim=0, eps)``)."""
    return F.normalize(x, p=p, dim=0, eps=eps)


class CategoricalTeachers(nn.Module):
    """``Cat(θ)`` over ``n`` teachers, θ optimised directly (§2.4, §3.2) and always a distribution.

    ``theta`` (an ``nn.Parameter``) holds the weights themselves. After each optimiser step :meth:`project_`
    restores the simplex: ``θ ← normalise(max(θ, min_weight) ⊙ active)`` with Eq. 8's normaliser (p = 1,
    ε = 1e-12). ``active`` is a boolean buffer; teachers discarded by :meth:`mask_smallest` (Eq. 8) stay at 0 forever
    and are never sampled. With ``min_weight = 0`` a teacher whose weight is pushed to 0 is also never sampled again
    (under SSWO it can no longer receive gradient) — a de facto self-discard; pass a small positive ``min_weight`` to
    keep every active teacher reachable.
    """

    def __init__(self, n: int, init: Tensor | Sequence[float] | None = None, min_weight: float = 0.0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if n < 1:
            raise ValueError("need at least one teacher")
        start = torch.full((n,), 1.0 / n, dtype=dtype) if init is None else torch.as_tensor(init, dtype=dtype).clone()
        if start.shape != (n,) or (start < 0).any() or start.sum() <= 0:
            raise ValueError(f"init must be {n} non-negative weights with a positive sum, got {start.tolist()}")
        self.min_weight = float(min_weight)
        self.theta = nn.Parameter(_normalise(start))
        self.register_buffer("active", torch.ones(n, dtype=torch.bool))

    @property
    def n(self) -> int:
        return self.theta.numel()

    def probs(self) -> Tensor:
        """The current distribution θ (a detached copy)."""
        return self.theta.detach().clone()

    def sample(self, generator: torch.Generator | None = None) -> int:
        """``i ~ Cat(θ)`` (§2.1). Discarded and zero-weight teachers have probability 0 and are never drawn."""
        return int(torch.multinomial(self.theta.detach().float(), 1, generator=generator).item())

    @torch.no_grad()
    def project_(self, fallback: Tensor | None = None) -> None:
        """Back onto the simplex: clamp at ``min_weight``, zero discarded teachers, Eq. 8 normaliser (p=1, ε=1e-12).

        If nothing positive is left (only possible when one teacher held all the mass and its step drove it to 0),
        θ becomes ``fallback`` (the pre-step distribution, as :func:`theta_step` passes) or uniform over the active
        teachers."""
        clamped = self.theta.clamp(min=self.min_weight) * self.active
        if clamped.sum() <= 0:
            clamped = fallback.to(clamped) * self.active if fallback is not None else self.active.to(clamped)
        self.theta.copy_(_normalise(clamped))

    @torch.no_grad()
    def mask_smallest(self, m: int) -> list[int]:
        """Teacher selection, Eq. 8: discard the ``m`` smallest-weight active teachers and hand their mass to the rest,
        ``θ⁽²⁾ = θ⁽¹⁾ ⊙ mask / max(‖θ⁽¹⁾ ⊙ mask‖_1, 1e-12)``. Ties go to the lower index (stable sort). Returns the
        discarded indices. The mask persists: those teachers stay at 0 through every later step and are never
        sampled. At least one teacher must remain."""
        idx = torch.nonzero(self.active).flatten()
        if not 0 <= m < idx.numel():
            raise ValueError(f"m must be in [0, {idx.numel() - 1}] (active teachers minus one), got {m}")
        order = torch.sort(self.theta.detach()[idx], stable=True).indices
        dropped = idx[order[:m]]
        self.active[dropped] = False
        self.theta.copy_(_normalise(self.theta * self.active))
        return sorted(dropped.tolist())


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, theta_i: float | Tensor = 1.0,
                 labels: Tensor | None = None, *, temperature: float = 1.0,
                 kind: Literal["soft_ce", "kl"] = "soft_ce", hard_label_weight: float = 0.0) -> Tensor:
    """``L_d(θ_i · f_{T_i}(x), f_S(x; w))`` of Eq. 3 / Eq. 6, averaged over the batch.

    ``soft_ce`` (default; TinyBERT's prediction-layer loss, which the paper's student and evaluation use):
    ``−Σ_c softmax(θ_i z_T / t)_c · log softmax(z_S / t)_c``. ``kl``: ``KL(softmax(θ_i z_T/t) ‖ softmax(z_S/t))``,
    which is ``soft_ce`` minus the target's entropy — the same w-gradient but a different θ-gradient, since the
    target's entropy depends on θ_i. Scaling the teacher's logits by ``θ_i ≤ 1`` softens its distribution (the
    paper's "label smoothing" reading of θ, §2.4.1). No T² factor (TinyBERT uses t = 1). With
    ``hard_label_weight > 0`` and ``labels``, ``hard_label_weight · CE(z_S, y)`` is added (the paper uses none).
    For CR pass the mixture of :func:`cr_mixture` as ``teacher_logits`` and ``theta_i = 1``.
    ``teacher_logits`` is used as given, so that θ's gradient can flow through a CR mixture: pass frozen teachers'
    logits detached (:func:`cr_mixture` and :func:`batch_loss_fn` do); ``theta_i`` keeps its graph.
    """
    t = temperature
    log_q = F.log_softmax(student_logits / t, dim=-1)
    log_p = F.log_softmax(theta_i * teacher_logits / t, dim=-1)
    p = log_p.exp()
    per_example = -(p * log_q).sum(-1)
    if kind == "kl":
        per_example = per_example + (p * log_p).sum(-1)
    elif kind != "soft_ce":
        raise ValueError(f"kind must be 'soft_ce' or 'kl', got {kind!r}")
    loss = per_example.mean()
    if hard_label_weight:
        if labels is None:
            raise ValueError("hard_label_weight > 0 needs labels")
        loss = loss + hard_label_weight * F.cross_entropy(student_logits, labels)
    return loss


def cr_mixture(theta: Tensor, teacher_logits: Sequence[Tensor], indices: Sequence[int] | None = None) -> Tensor:
    """Continuous relaxation, Eq. 4: ``Σ_i θ_i f_{T_i}(x)``. ``indices`` restricts the sum to those teachers (the
    others have θ_i = 0 after teacher selection, so they need not run); ``teacher_logits[k]`` belongs to teacher
    ``indices[k]`` then. Differentiable in θ, teachers detached."""
    idx = list(range(len(teacher_logits))) if indices is None else list(indices)
    if len(idx) != len(teacher_logits) or not idx:
        raise ValueError("one logits tensor per (listed) teacher, at least one")
    return sum(theta[i] * z.detach() for i, z in zip(idx, teacher_logits))


def _forward(student: nn.Module, params: Params, inputs: Tensor | Mapping[str, Tensor]) -> Tensor:
    out = functional_call(student, params, (inputs,)) if isinstance(inputs, Tensor) else \
        functional_call(student, params, (), dict(inputs))
    return getattr(out, "logits", out)


def _teacher(teachers: TeacherLogits, i: int) -> Tensor:
    return teachers(i) if callable(teachers) else teachers[i]


def batch_loss_fn(student: nn.Module, inputs: Tensor | Mapping[str, Tensor], teachers: TeacherLogits,
                  mode: Mode, sampled: int | None = None, active: Tensor | None = None,
                  labels: Tensor | None = None, **loss_kw) -> LossFn:
    """``(params, θ) -> loss`` on one batch, for :func:`lookahead_theta_grad`: the SSWO objective (Eq. 6, only teacher
    ``sampled`` runs, its logits scaled by ``θ[sampled]``) or the CR objective (``L_d`` against Eq. 4's mixture over
    the ``active`` teachers). ``teachers`` is a list of per-teacher logits or a callable ``i -> logits`` (lazy, so
    SSWO runs one teacher). ``loss_kw`` goes to :func:`distill_loss`."""
    if mode == "sswo":
        if sampled is None:
            raise ValueError("SSWO needs the sampled teacher")
        target = _teacher(teachers, sampled).detach()
        return lambda params, theta: distill_loss(_forward(student, params, inputs), target, theta[sampled],
                                                  labels, **loss_kw)
    if mode == "cr":
        if active is not None:
            idx = torch.nonzero(active).flatten().tolist()
        elif not callable(teachers):
            idx = list(range(len(teachers)))
        else:
            raise ValueError("CR with a callable teacher provider needs `active` to know the team")
        targets = [_teacher(teachers, i).detach() for i in idx]
        return lambda params, theta: distill_loss(_forward(student, params, inputs), cr_mixture(theta, targets, idx),
                                                  1.0, labels, **loss_kw)
    raise ValueError(f"mode must be 'sswo' or 'cr', got {mode!r}")


def _grad(loss: Tensor, inputs: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    grads = torch.autograd.grad(loss, list(inputs), create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def lookahead_theta_grad(student: nn.Module, teachers: CategoricalTeachers, train_loss: LossFn, val_loss: LossFn,
                         xi: float, mode: Mode = "sswo", sampled: int | None = None,
                         method: Literal["exact", "finite_difference"] = "exact", fd_eps: float = 0.01) -> Tensor:
    """``∇_θ L_val(w', θ)`` with ``w' = w − ξ ∇_w L_train(w, θ)``: Eq. 5 (CR) / Eq. 7 (SSWO).

    ``train_loss``/``val_loss`` are ``(params, θ) -> loss`` on a distillation-subset batch and a validation-subset batch
    (e.g. from :func:`batch_loss_fn`); w are the student's trainable parameters, which are read, never changed.
    The paper names ξ "the learning rate of categorical distribution" (§2.4.1); DARTS uses the student's learning
    rate. ξ = 0 gives the first-order approximation.

    ``method="exact"`` differentiates through the inner step with autograd (second order, exact).
    ``method="finite_difference"`` is DARTS's approximation of the mixed second derivative:
    ``∇_θ L_val(w', θ) − ξ [∇_θ L_train(w⁺, θ) − ∇_θ L_train(w⁻, θ)] / (2r)``, ``w± = w ± r ∇_{w'} L_val(w', θ)``,
    ``r = fd_eps / ‖∇_{w'} L_val(w', θ)‖``.

    The result is masked: SSWO returns a one-hot gradient on ``sampled`` (Eq. 7 optimises only θ̃ = θ_sampled); CR
    returns zeros on discarded teachers. Dropout makes every call a different function: call in eval mode, or accept it.
    """
    names = [k for k, p in student.named_parameters() if p.requires_grad]
    w = [p.detach().requires_grad_(True) for k, p in student.named_parameters() if p.requires_grad]
    theta = teachers.theta.detach().clone().requires_grad_(True)
    as_params = lambda ws: dict(zip(names, ws))  # noqa: E731
    if xi == 0:  # first-order approximation: w' = w, no inner step to differentiate through
        grad = _grad(val_loss(as_params(w), theta), [theta])[0]
    elif method == "exact":
        g_train = _grad(train_loss(as_params(w), theta), w, create_graph=True)
        w_next = [wk - xi * gk for wk, gk in zip(w, g_train)]
        grad = _grad(val_loss(as_params(w_next), theta), [theta])[0]
    elif method == "finite_difference":
        g_train = _grad(train_loss(as_params(w), theta.detach()), w)
        w_next = [(wk - xi * gk).detach().requires_grad_(True) for wk, gk in zip(w, g_train)]
        grads = _grad(val_loss(as_params(w_next), theta), [theta, *w_next])
        grad, dw = grads[0], grads[1:]
        norm = torch.sqrt(sum((d * d).sum() for d in dw))
        if xi and norm > 0:
            r = fd_eps / norm
            with torch.no_grad():
                w_plus = [wk + r * d for wk, d in zip(w, dw)]
                w_minus = [wk - r * d for wk, d in zip(w, dw)]
            g_plus = _grad(train_loss(as_params(w_plus), theta), [theta])[0]
            g_minus = _grad(train_loss(as_params(w_minus), theta), [theta])[0]
            grad = grad - xi * (g_plus - g_minus) / (2 * r)
    else:
        raise ValueError(f"method must be 'exact' or 'finite_difference', got {method!r}")
    return _mask_grad(grad.detach(), teachers, mode, sampled)


def _mask_grad(grad: Tensor, teachers: CategoricalTeachers, mode: Mode, sampled: int | None) -> Tensor:
    if mode == "sswo":
        if sampled is None:
            raise ValueError("SSWO needs the sampled teacher")
        keep = torch.zeros_like(teachers.active)
        keep[sampled] = True
    elif mode == "cr":
        keep = teachers.active
    else:
        raise ValueError(f"mode must be 'sswo' or 'cr', got {mode!r}")
    return torch.where(keep & teachers.active, grad, torch.zeros_like(grad))


def make_theta_optimizer(teachers: CategoricalTeachers, lr: float = 3e-4, weight_decay: float = 1e-3,
                         betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """§3.2: "Adam with a weight decay of 1e-3", learning rate 3e-4 … 1e-3 (Appendix E). Coupled L2 decay, as
    ``torch.optim.Adam``'s ``weight_decay`` is. The paper gives no betas; torch's defaults are used (DARTS, whose
    look-ahead the paper borrows, used (0.5, 0.999))."""
    return torch.optim.Adam([teachers.theta], lr=lr, betas=betas, weight_decay=weight_decay)


@torch.no_grad()
def theta_step(optimizer: torch.optim.Optimizer, teachers: CategoricalTeachers, grad: Tensor, mode: Mode,
               sampled: int | None = None, renormalise: bool = True) -> None:
    """Apply a θ-gradient with ``optimizer`` (a step of Algorithm 1's "update Cat(θ) by descending Eq. 7").

    SSWO: only coordinate ``sampled`` moves. After the optimiser's step every other coordinate of θ and of every
    optimiser state tensor shaped like θ (Adam's ``exp_avg``, ``exp_avg_sq``) is restored bit for bit, so momentum
    and weight decay cannot leak into teachers that were not drawn (a lazy/sparse Adam). CR: every active coordinate
    moves; discarded teachers are restored (they stay 0). Then, unless ``renormalise=False``,
    :meth:`CategoricalTeachers.project_` puts θ back on the simplex, which rescales all weights by one factor.
    """
    p = teachers.theta
    keep = _mask_grad(torch.ones_like(grad), teachers, mode, sampled).bool()  # coordinates allowed to move
    before = p.detach().clone()
    state = optimizer.state.get(p, {})
    saved = {k: v.clone() for k, v in state.items() if isinstance(v, Tensor) and v.shape == p.shape}
    p.grad = torch.where(keep, grad.to(p), torch.zeros_like(p))
    optimizer.step()
    p.grad = None
    p.copy_(torch.where(keep, p, before))
    state = optimizer.state.get(p, {})
    for k, old in saved.items():
        state[k].copy_(torch.where(keep, state[k], old))
    if renormalise:
        teachers.project_(fallback=before)


def candidate_steps(phase_steps: int, k: int = 25) -> list[int]:
    """Indices (0-based, within a phase of ``phase_steps`` steps) after which a candidate θ is recorded: the ends of
    ``k`` equal consecutive segments, ``ceil((j+1)·L/k) − 1`` for ``j = 0..k−1``. With one segment per epoch this is the
    paper's "the later 25 epochs deliver 25 categorical distribution candidates" (Appendix B.3, §3.2)."""
    if not 1 <= k <= phase_steps:
        raise ValueError(f"need 1 <= k <= phase steps, got k={k}, steps={phase_steps}")
    return [math.ceil((j + 1) * phase_steps / k) - 1 for j in range(k)]


def candidate_distributions(history: Sequence[Tensor], k: int = 25) -> list[Tensor]:
    """The ``k`` phase-2 candidates (§3.2: 25 of them, each then trained from scratch with Eq. 3 and the best kept on
    the dev set): from ``history``, θ after each phase-2 step in order, the snapshots at :func:`candidate_steps`."""
    return [history[i].detach().clone() for i in candidate_steps(len(history), k)]


def default_m(teacher_scores: Sequence[float], student_score: float,
              same_as_student: Sequence[bool] | None = None) -> int:
    """Appendix A.1's rule of thumb for the number of ineffective teachers: the teachers weaker than the student
    (``score < student_score``; any capacity measure where larger is stronger), a teacher with the student's own
    architecture counting as weak ("the student itself can be treated as the above weak teacher"; Appendix B.3 has
    m = 1 for teams that contain the student's architecture once). Capped at ``n − 1`` so one teacher remains."""
    flags = list(same_as_student) if same_as_student is not None else [False] * len(teacher_scores)
    if len(flags) != len(teacher_scores) or not teacher_scores:
        raise ValueError("one flag per teacher, at least one teacher")
    m = sum(1 for s, own in zip(teacher_scores, flags) if own or s < student_score)
    return min(m, len(teacher_scores) - 1)


def random_distribution(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """A random categorical distribution, uniform on the simplex (flat Dirichlet: normalised Exp(1) draws). The
    paper's baseline of §4.3 ("200 categorical distributions are randomly generated") does not say how; this is the
    uniform choice."""
    u = torch.rand(n, generator=generator, dtype=dtype).clamp_min(torch.finfo(dtype).tiny)
    return _normalise(-torch.log(u))


def uniform_distribution(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """θ_i = 1/n. Under CR its mixture Σ θ_i f_{T_i} is AvgKD's averaged teacher logits; sampled (Eq. 3) it is uniform
    stochastic KD, each teacher's logits scaled by 1/n."""
    return torch.full((n,), 1.0 / n, dtype=dtype)

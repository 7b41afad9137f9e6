"""TED: task-aware layer-wise distillation (Liang et al. 2023, paper 001), two declared stages.

Stage I (Eq. 4-5), ``filters``, shared across student seeds and cached beside the teacher: the models are frozen;
for each layer pair k a filter g^k with a task head (softmax classifier, or a regression head, on the model's sentence
representation: [CLS], or the mean over real tokens for a mean-pooled model, ``--pooling``; for extractive QA
the task's own span head, a Linear(d_t, 2) giving start/end scores on every token) is trained on the task loss, all K
jointly: ``min_W sum_k l(head_k(g_t^k(H_t^{M(k)}))[CLS])``. Teacher filters map d_t -> d_t, student filters
d_s -> d_t (§5.3). With a student initialised from teacher layers (A.4 case 2.2) the student's filter k is by default a
copy of the trained teacher filter at M(k) (``--ted-student-filters copy``); ``train`` trains student filters on the
frozen student in Stage I instead (required when d_s != d_t); ``random`` is the Table 6 ablation.

Stage II (Eq. 6-7): heads removed, teacher and its filters frozen, student and its filters trained on
``L + alpha_1 * T^2 * KL(pred) + alpha_2 * sum_k MSE(g_t^k(H_t^{M(k)}), g_s^k(H_s^k))`` with alpha_1 = ``--alpha-kd``,
alpha_2 = ``--beta``. MSE: per pair, the squared error averaged over the d_t features and over the real (non-padded)
tokens of the batch (padded positions dropped: ``functional.masked_mse``); summed over pairs. ``ted-kl`` (Remark 3.2, §6.6) keeps the heads and penalises
``sum_k KL(softmax(head_t(g_t)) || softmax(head_s(g_s)))`` at the [CLS] position instead (MSE for regression).

Causal LM (paper 001 §4, Table 1): the filters' heads are the teacher's own output head (its final norm and LM head,
frozen, never trained: the "language-model filters"), applied at every position, and Stage I trains the filters on
the next-token NLL (``task_loss`` of token logits); ``ted-kl`` compares the heads' next-token distributions over the
real positions. ``--ted-filter layer`` is not available for causal LMs.

Filter ablations (Table 6: W_t / W_s trained on the target task ✓, random ✗, or absent), each a pair of options:
Abl.1 ``--ted-student-filters none`` (W_t ✓, no W_s: MSE(g_t(H_t), H_s), equal hidden sizes); Abl.2
``--ted-teacher-filters none --ted-student-filters random`` (no W_t, W_s ✗); Abl.3 ``--ted-student-filters random``
(W_t ✓, W_s ✗); Abl.4 ``--ted-teacher-filters none --ted-student-filters train`` (no W_t, W_s trained in Stage I on the
frozen student); TED: the defaults. ``--ted-teacher-filters none`` with ``copy`` starts W_s as a copy of the absent
teacher filter, the identity (LWD with a learnable W_s); ``--ted-teacher-filters random`` is not a paper row (untrained
teacher filters, copied into the student's). A combination the objective cannot honour is refused
(``TED.check_options``), never changed. Layer mapping: ``--layer-map ted`` is the paper's M(k) = 2k-1 for
k <= K/2, else 2k. Filter architectures (§6.5, Table 8): ``linear`` (default), ``mlp`` (two layers with GeLU),
``layer`` (initialised from the weights of the model's layer after M(k), or M(k) itself for the last layer).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tasks import get_task
from ..errors import UsageError
from ..models.inits import layer_list
from ..options import Option
from .base import Context, LossOutput, Needs, Outputs, Stage, register_objective
from .distributions import forward_kl
from .functional import logit_kl, masked_mse, span_kl
from .layerwise import BETA, LayerObjective


class _LayerFilter(nn.Module):
    """A transformer layer used as a filter: called with the padding mask in additive form."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        out = self.layer(h, attention_mask=additive)
        return out[0] if isinstance(out, tuple) else out


class _FrozenLMHead(nn.Module):
    """A causal LM's output head (final norm, when the model has one, then the LM head), copied and frozen: TED's
    language-model filters end in it. Its weights are buffers, not parameters, so no stage ever trains them (they
    still move with the objective and are saved with a shared stage)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        base = getattr(model, "base_model", model)
        norm = getattr(base, "ln_f", None) or getattr(base, "norm", None)
        self.norm = copy.deepcopy(norm) if norm is not None else nn.Identity()
        self.head = copy.deepcopy(model.get_output_embeddings())
        for module in self.modules():
            for name, param in list(module._parameters.items()):
                del module._parameters[name]
                module.register_buffer(name, None if param is None else param.detach().clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))


class _Filter(nn.Module):
    def __init__(self, arch: str, d_in: int, d_out: int, layer: nn.Module | None = None):
        super().__init__()
        self.arch = arch
        if arch == "linear":
            self.net = nn.Linear(d_in, d_out)
        elif arch == "mlp":
            self.net = nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))
        elif arch == "layer":
            if layer is None or d_in != d_out:
                raise UsageError("--ted-filter layer needs the teacher's layers and equal hidden sizes; use linear or mlp")
            self.net = _LayerFilter(copy.deepcopy(layer))
        else:  # "identity": no filter (the LWD ablation's teacher side)
            self.net = nn.Identity()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(h, mask) if self.arch == "layer" else self.net(h)


GROUP = "TED"  # the `--help` section of its options
TED_OPTIONS = (
    Option("ted_filter", str, "linear", "TED filter architecture (Liang et al. 2023 §6.5): linear | mlp (two layers, GeLU) | "
           "layer (init from the model's next layer).", GROUP, choices=("linear", "mlp", "layer")),
    Option("ted_student_filters", str, "copy", "TED student filters W_s: copy (start from the teacher filter at M(k), A.4 "
           "case 2.2; with --ted-teacher-filters none, the identity) | train (Stage I on the frozen student) | random "
           "(untrained: Table 6's ✗) | none (no W_s: the student's layer is compared with the filtered teacher layer, "
           "Table 6 Abl.1; equal hidden sizes).", GROUP, choices=("copy", "train", "random", "none")),
    Option("ted_teacher_filters", str, "trained", "TED teacher filters W_t: trained (Stage I) | random (untrained) | none "
           "(no W_t: the teacher's layer itself, Table 6 Abl.2 and Abl.4).", GROUP, choices=("trained", "random", "none")),
    Option("ted_filter_epochs", float, 1.0, "TED Stage I epochs (filters only, model frozen; Liang et al. 2023 §5.2 train "
           "one epoch).", GROUP, low=0.0, low_open=True),
    Option("ted_filter_lr", float, 1e-3, "TED Stage I learning rate (filters start random; the model is frozen).", GROUP,
           low=0.0, low_open=True, search=("float", 1e-4, 1e-2, "log")),
    Option("ted_finetune_student", bool, False, "TED: fine-tune the student on the task (--epochs, CE) before training its "
           "filters in Stage I (A.2.3; the student's filters are then trained in Stage I, per seed: refused with "
           "--ted-student-filters random or none).", GROUP),
)


@register_objective("ted")
class TED(LayerObjective):
    __doc__ = __doc__
    version = "1.0"
    paper = "Liang et al. 2023 (TED), Eq. 4-7: task-aware filters (Stage I), then L + a1*KD + a2*sum_k MSE(g_t, g_s)"
    needs = Needs(logits=True, hidden_states=True, token_aligned=True)
    reads_sentence = True  # the filters' classification heads (Stage I; ted-kl's Stage II too)
    option_groups = {GROUP: "only for --objective ted and ted-kl: task-aware filters (Liang et al. 2023)"}
    # alpha_2's search range: the paper's, 10..1000 (§5.3)
    options = (dataclasses.replace(BETA, search=("float", 10.0, 1000.0, "log")), *TED_OPTIONS)
    use_kl = False
    # alpha_2: with a student copied from the teacher's layers, the filtered MSE starts near 0.008 on MPNet/MRPC while CE is
    # near 0.7 (benchmarks/smoke_objectives.sh): alpha_2 = 100 brings the two to one scale, inside the paper's 10..1000 (§5.3)
    default_beta = 100.0
    lm_default_beta = 0.1  # causal LM: the paper's alpha_2 for language modelling (§4.3, with alpha_1 = 2.5)

    @classmethod
    def beta_default(cls, config) -> float:
        """100 for sentence and QA tasks; for a causal LM the paper's 0.1 (at 100 the filtered MSE outweighs the
        next-token loss and the student ends above the undistilled one's perplexity). ``ted-kl`` inherits both: the
        paper gives no language-modelling weight for its KL form."""
        return cls.lm_default_beta if get_task(config.task).causal else cls.default_beta

    @classmethod
    def check_options(cls, config, task) -> None:
        student = config.ted_student_filters
        if config.ted_finetune_student and student in ("random", "none"):
            raise UsageError(f"--ted-finetune-student trains the student's filters in Stage I; --ted-student-filters {student} "
                             f"has none to train: use copy or train")
        if cls.use_kl and student == "none":
            raise UsageError("ted-kl compares the predictions of the filters' heads; --ted-student-filters none leaves the "
                             "student no filter: use copy, train or random")
        if task.causal and config.ted_filter == "layer":
            raise UsageError("--ted-filter layer is not available for causal LMs; use linear or mlp")

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        cfg = ctx.config
        # the filters' task heads are the task's own head (§3): classes at [CLS], extractive QA's start/end scores (a
        # Linear(d_t, 2) over every token), or a causal LM's frozen output head at every position
        self.span = ctx.task.span_output
        self.lm = ctx.task.causal
        ds, dt = ctx.student_hidden, ctx.teacher_hidden
        n_out = 2 if self.span else ctx.task.num_labels
        type(self).check_options(cfg, ctx.task)
        lm_head = _FrozenLMHead(ctx.teacher_model) if self.lm else None
        head = (lambda: lm_head) if self.lm else (lambda: nn.Linear(dt, n_out))
        self.student_mode = "train" if cfg.ted_finetune_student else cfg.ted_student_filters
        if self.student_mode == "copy" and ds != dt:
            self.student_mode = "train"  # a teacher filter cannot take the student's width: train the student's own (§5.3)
        if self.student_mode == "none" and ds != dt:
            raise UsageError(f"--ted-student-filters none compares the student's layers with the teacher's directly, which "
                             f"needs equal hidden sizes (student {ds}, teacher {dt}); use copy, train or random")
        t_arch = "identity" if cfg.ted_teacher_filters == "none" else cfg.ted_filter
        s_arch = "identity" if self.student_mode == "none" else "linear" if cfg.ted_teacher_filters == "none" else cfg.ted_filter
        layers = None
        if cfg.ted_filter == "layer" and cfg.ted_teacher_filters != "none":
            layers = layer_list(ctx.teacher_model)[1]
        nxt = lambda t: layers[min(t, len(layers) - 1)] if layers is not None else None  # the layer after M(k) (0-based t)
        # Filters that Stage I trains are shared by every seed: initialise them from the teacher's seed, not the run's.
        with torch.random.fork_rng():
            torch.manual_seed(cfg.teacher_seed)
            self.t_filters = nn.ModuleList([_Filter(t_arch, dt, dt, nxt(t)) for _, t in ctx.layer_map])
            self.t_heads = nn.ModuleList([head() for _ in ctx.layer_map])
            if self.student_mode == "train":
                self.s_filters = nn.ModuleList([_Filter(s_arch, ds, dt, nxt(t)) for _, t in ctx.layer_map])
                self.s_heads = nn.ModuleList([head() for _ in ctx.layer_map])
        if self.student_mode != "train":  # copy: overwritten at Stage II; random: seeded by the run (ablation)
            self.s_filters = nn.ModuleList([_Filter(s_arch, ds, dt, nxt(t)) for _, t in ctx.layer_map])
            self.s_heads = nn.ModuleList([head() for _ in ctx.layer_map])
        if self.student_mode == "copy" and t_arch == "identity":
            for f in self.s_filters:  # a copy of the absent teacher filter: W_s starts at the identity, plain MSE as `lwd`
                nn.init.eye_(f.net.weight)
                nn.init.zeros_(f.net.bias)

    # -- stages -----------------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        cfg = self.ctx.config
        distil = [dataclasses.replace(s, title="Stage II") for s in super().stages()]  # the paper's names, in progress lines
        if cfg.ted_teacher_filters != "trained" and self.student_mode != "train":
            return distil  # nothing to train in Stage I
        # Stage I is shared by every seed, unless the student was first fine-tuned (per seed) before its filters train
        filters = Stage("filters", epochs=cfg.ted_filter_epochs, lr=cfg.ted_filter_lr, train_student=False,
                        needs_student=self.student_mode == "train", shared=not cfg.ted_finetune_student, title="Stage I")
        finetune = [Stage("finetune")] if cfg.ted_finetune_student else []
        return finetune + [filters] + distil

    def stage_identity(self, stage: Stage) -> dict:
        cfg = self.ctx.config
        return {"objective": "ted", "version": self.version, "pairs": self.ctx.layer_map, "filter": cfg.ted_filter,
                "student_filters": self.student_mode, "teacher_filters": cfg.ted_teacher_filters}

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "finetune":
            self.requires_grad_(False)
            return
        stage_one = stage.name == "filters"
        train_teacher_side = stage_one and self.ctx.config.ted_teacher_filters == "trained"
        self.t_filters.requires_grad_(train_teacher_side)
        self.t_heads.requires_grad_(train_teacher_side)
        if stage_one:
            self.s_filters.requires_grad_(self.student_mode == "train")
            self.s_heads.requires_grad_(self.student_mode == "train")
            return
        # copy: student filter k <- the teacher filter at M(k); with --ted-teacher-filters none there is none to copy and
        # W_s stays where __init__ put it (the identity). random / train / none: W_s as __init__ or Stage I left it
        if self.student_mode == "copy" and self.ctx.config.ted_teacher_filters != "none" and not getattr(self, "_copied", False):
            self.s_filters.load_state_dict(self.t_filters.state_dict())  # student filter k <- trained teacher filter at M(k)
            self.s_heads.load_state_dict(self.t_heads.state_dict())
            self._copied = True
        self.s_filters.requires_grad_(True)
        self.s_heads.requires_grad_(self.use_kl)  # Stage II removes the heads, except in ted-kl

    # -- losses -----------------------------------------------------------------------------------------------------
    def forward(self, student: Outputs | None, teacher: Outputs | None, batch: dict, stage: Stage) -> LossOutput:
        if stage.name == "finetune":  # A.2.3: the student learns the task before its filters are trained on it
            ce = self.task_loss(student.logits, batch["labels"], batch.get("attention_mask"))
            return LossOutput(ce, {"ce": ce.detach()})
        if stage.name != "filters":
            return super().forward(student, teacher, batch, stage)

        mask, labels = batch["attention_mask"], batch["labels"]
        terms = {}
        if self.ctx.config.ted_teacher_filters == "trained":
            terms["filters_t"] = sum(self.task_loss(h(self._pool(f(teacher.hidden_states[t], mask), batch, True)), labels, mask)
                                     for (_, t), f, h in zip(self.ctx.layer_map, self.t_filters, self.t_heads))
        if self.student_mode == "train":
            terms["filters_s"] = sum(self.task_loss(h(self._pool(f(student.hidden_states[s], mask), batch)), labels, mask)
                                     for (s, _), f, h in zip(self.ctx.layer_map, self.s_filters, self.s_heads))
        loss = sum(terms.values())
        return LossOutput(loss, {k: v.detach() for k, v in terms.items()})

    def pair_loss(self, student: Outputs, teacher: Outputs, s: int, t: int, k: int, batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"]
        gt = self.t_filters[k](teacher.hidden_states[t], mask).detach()  # the teacher side is frozen in Stage II
        gs = self.s_filters[k](student.hidden_states[s], mask)
        if not self.use_kl:  # Eq. 6: MSE(g_t^k, g_s^k)
            return masked_mse(student=gs, teacher=gt, mask=mask)
        zs, zt = self.s_heads[k](self._pool(gs, batch)), self.t_heads[k](self._pool(gt, batch, True))  # Remark 3.2: the heads' predictions
        if self.span:  # start/end distributions over the window's real tokens, as kd compares them
            return span_kl(student=zs, teacher=zt, mask=mask)
        if self.lm:  # at every real position: next-token distributions
            return forward_kl(student=zs, teacher=zt, mask=mask)
        if self.task.regression:
            return F.mse_loss(zs.float(), zt.float())
        return logit_kl(student=zs, teacher=zt)

    def _pool(self, h: torch.Tensor, batch: dict, teacher: bool = False) -> torch.Tensor:
        """What a filter's head reads: the model's sentence representation for a classification head (position 0, or
        the mean over the real tokens for a mean-pooled model: ``Objective.sentence``), every position for extractive
        QA's span head ([B, L, 2] scores) and for an LM head."""
        return h if (self.lm or self.span) else self.sentence(h, batch, teacher)

    def report(self) -> dict:
        n = lambda mods: sum(p.numel() for m in mods for p in m.parameters())
        teacher_params = sum(p.numel() for p in self.ctx.teacher_model.parameters()) if self.ctx.teacher_model is not None else None
        filters = n(self.t_filters) + (0 if self.lm else n(self.t_heads))  # an LM head is the teacher's own, frozen
        return {"filter_params_teacher": filters, "filter_params_student": n(self.s_filters),
                "filter_share_of_teacher": filters / teacher_params if teacher_params else None,
                "student_filter_mode": self.student_mode}


@register_objective("ted-kl")
class TEDKL(TED):
    """TED with the filters' task heads kept in Stage II, penalising KL between their predictions (Remark 3.2, §6.6)."""

    paper = "Liang et al. 2023 (TED) Remark 3.2: KL between the filters' head predictions instead of MSE"
    use_kl = True

    def stage_identity(self, stage: Stage) -> dict:
        return TED.stage_identity(self, stage)  # Stage I is the same as TED's: share its cache

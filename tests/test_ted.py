"""TED (paper 001): Stage I trains filters only; Stage II freezes the teacher side; Eq. 7 recomputed by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distilbench.cli import main
from distilbench.config import RunConfig
from distilbench.data.batching import encode
from distilbench.training.loop.harness import TeacherSource, train
from distilbench.training.loop.parallel import make_accelerator
from distilbench.models.loading import load_tokenizer
from distilbench.objectives import Context, Outputs, Stage, get_objective
from distilbench.results.store import ResultsStore
from distilbench.data.tasks import Example, get_task


def _models():
    from transformers import BertConfig, BertForSequenceClassification

    tok = load_tokenizer("minilm-l6")
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(cfg)
    from distilbench.models.inits import copy_layers
    student, _ = copy_layers(teacher, (1, 3), seed=0)
    return tok, teacher, student


def _encs(tok, n=48):
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    ex = [Example(i, f"this is {words[i % 6]} and {words[(i * 5) % 6]}", None, int(words[i % 6] in ("good", "fine", "great")))
          for i in range(n)]
    return encode(tok, ex, 32)


def _objective(name="ted", **cfg):
    tok, teacher, student = _models()
    base = dict(ted_filter_lr=1e-2, lr=1e-3, batch_size=8, epochs=1, ted_filter_epochs=4, warmup_ratio=0.0)
    base.update(cfg)
    config = RunConfig(**base)
    ctx = Context(get_task("sst2"), config, [(1, 1), (2, 3)], 16, 16, teacher_model=teacher)
    return tok, teacher, student, get_objective(name)(ctx), config


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage_one_changes_no_model_parameter_and_filters_learn():
    tok, teacher, student, ted, cfg = _objective()
    ted.stages = lambda: [Stage("filters", epochs=4, lr=1e-2, train_student=False, needs_student=False)]
    t0, s0, f0 = _snapshot(teacher), _snapshot(student), _snapshot(ted.t_filters)
    enc = _encs(tok)
    result = train(student, ted, TeacherSource([teacher], ted.needs), train_enc=enc, select_enc=enc, task=get_task("sst2"),
                   cfg=cfg, seed=0, accelerator=make_accelerator(cfg), epochs=4, lr=1e-2)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in s0.items())
    assert any(not torch.equal(v, ted.t_filters.state_dict()[k]) for k, v in f0.items())
    losses = [h["filters_t"] for h in result.history]
    assert losses[-1] < losses[0]


def test_stage_two_freezes_teacher_filters_and_trains_student_side():
    tok, teacher, student, ted, cfg = _objective()
    enc = _encs(tok)
    t_filters, s0 = _snapshot(ted.t_filters), _snapshot(student)
    ted.stages = lambda: [Stage("distil")]
    train(student, ted, TeacherSource([teacher], ted.needs), train_enc=enc, select_enc=enc, task=get_task("sst2"), cfg=cfg,
          seed=0, accelerator=make_accelerator(cfg), epochs=1, lr=1e-3)
    assert all(torch.equal(v, ted.t_filters.state_dict()[k]) for k, v in t_filters.items())
    # student filters started as copies of the teacher filters and then moved
    assert any(not torch.equal(ted.s_filters.state_dict()[k], v) for k, v in t_filters.items())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in s0.items())


def test_copy_places_teacher_filter_of_layer_mk_at_student_layer_k():
    _, _, _, ted, _ = _objective()
    with torch.no_grad():
        for k, f in enumerate(ted.t_filters):
            f.net.weight.fill_(k + 1.0)
    ted.begin_stage(Stage("distil"))
    for k, (s, t) in enumerate(ted.ctx.layer_map):
        assert torch.equal(ted.s_filters[k].net.weight, ted.t_filters[k].net.weight)
        assert ted.s_filters[k].net.weight[0, 0].item() == k + 1.0
    # filter k reads teacher layer M(k): changing teacher layer 3 moves only pair 2's term
    h_t = [torch.randn(2, 4, 16) for _ in range(5)]
    h_s = [torch.randn(2, 4, 16) for _ in range(3)]
    batch = {"attention_mask": torch.ones(2, 4, dtype=torch.long), "labels": torch.tensor([0, 1])}
    base = ted.intermediate(Outputs(torch.zeros(2, 2), tuple(h_s)), Outputs(torch.zeros(2, 2), tuple(h_t)), batch)
    h_t2 = list(h_t)
    h_t2[2] = torch.randn(2, 4, 16)  # teacher layer 2 is not mapped
    same = ted.intermediate(Outputs(torch.zeros(2, 2), tuple(h_s)), Outputs(torch.zeros(2, 2), tuple(h_t2)), batch)
    assert same.item() == pytest.approx(base.item())


@pytest.mark.parametrize("name", ["ted", "ted-kl"])
def test_stage_two_loss_equals_eq7_by_hand(name):
    torch.manual_seed(3)
    _, _, _, ted, cfg = _objective(name, alpha_kd=2.5, beta=7.0, temperature=2.0)
    ted.begin_stage(Stage("distil"))
    with torch.no_grad():
        for f in list(ted.s_filters) + list(ted.s_heads):
            for p in f.parameters():
                p.add_(0.1 * torch.randn_like(p))  # make the student side differ from the teacher side
    B, L = 3, 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    h_t = [torch.randn(B, L, 16) for _ in range(5)]
    h_s = [torch.randn(B, L, 16) for _ in range(3)]
    zs, zt, y = torch.randn(B, 2), torch.randn(B, 2), torch.tensor([1, 0, 1])
    out = ted(Outputs(zs, tuple(h_s)), Outputs(zt, tuple(h_t)), {"attention_mask": mask, "labels": y}, Stage("distil"))

    ce = F.cross_entropy(zs, y)
    pt, ps = F.softmax(zt / 2, -1), F.log_softmax(zs / 2, -1)
    kd = sum((pt[i] * (pt[i].log() - ps[i])).sum() for i in range(B)) / B
    d = 0.0
    for k, (s, t) in enumerate([(1, 1), (2, 3)]):
        Wt, bt = ted.t_filters[k].net.weight, ted.t_filters[k].net.bias
        Ws, bs = ted.s_filters[k].net.weight, ted.s_filters[k].net.bias
        if name == "ted":
            num, cnt = 0.0, 0
            for i in range(B):
                for j in range(L):
                    if mask[i, j]:
                        gt = Wt @ h_t[t][i, j] + bt
                        gs = Ws @ h_s[s][i, j] + bs
                        num += ((gt - gs) ** 2).sum()
                        cnt += 16
            d += num / cnt
        else:
            Ht, Hs = ted.t_heads[k], ted.s_heads[k]
            for i in range(B):
                p_t = F.softmax(Ht.weight @ (Wt @ h_t[t][i, 0] + bt) + Ht.bias, -1)
                log_p_s = F.log_softmax(Hs.weight @ (Ws @ h_s[s][i, 0] + bs) + Hs.bias, -1)
                d += (p_t * (p_t.log() - log_p_s)).sum() / B
    expected = ce + 2.5 * 4 * kd + 7.0 * d
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.terms[name].item() == pytest.approx(d.item(), rel=1e-5)


def test_ablations_change_what_stage_one_trains():
    _, _, _, random_t, _ = _objective(ted_teacher_filters="random")
    assert [s.name for s in random_t.stages()] == ["distil"]
    _, _, _, lwd_like, _ = _objective(ted_teacher_filters="none")
    assert [s.name for s in lwd_like.stages()] == ["distil"] and lwd_like.t_filters[0].arch == "identity"
    assert torch.equal(lwd_like.s_filters[0].net.weight, torch.eye(16))
    _, _, _, trained_s, _ = _objective(ted_student_filters="train")
    stage = trained_s.stages()[0]
    assert stage.name == "filters" and stage.needs_student and stage.shared
    for arch in ("mlp", "layer"):
        _, _, _, t, _ = _objective(ted_filter=arch)
        assert t.t_filters[0].arch == arch


def test_every_ablation_begins_stage_two():
    """Stage II's start copies the teacher filters into the student's (copy mode); with no teacher filters
    (``none``) there is nothing to copy: W_s keeps its identity start. This path crashed the ted-table2 suite once
    (load_state_dict of the identity filters' empty state into linear ones)."""
    for teacher_filters in ("trained", "random", "none"):
        _, _, _, ted, _ = _objective(ted_teacher_filters=teacher_filters)
        ted.begin_stage(Stage("distil"))
        assert all(p.requires_grad for p in ted.s_filters.parameters())
        if teacher_filters == "none":
            assert torch.equal(ted.s_filters[0].net.weight, torch.eye(16))
        else:
            assert torch.equal(ted.s_filters[0].net.weight, ted.t_filters[0].net.weight)


def test_cli_stage_one_runs_once_and_is_reused(tiny_run_args, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "cache"))  # not a Stage I another test left in the session's cache
    args = ["run", "--objective", "ted", "--seeds", "2", "--no-baseline", "--init", "layers:1,3", *tiny_run_args]
    assert main(args) == 0
    rows = ResultsStore(tmp_path / "results.sqlite").rows(objective="ted")
    hist = {r["seed"]: r["extra"]["history"] for r in rows}
    assert hist[0][0]["stage"] == "filters" and "cached" not in hist[0][0]
    # a seed that reads the cached Stage I shows the losses of the run that trained it
    stage_one = [h for h in hist[0] if h["stage"] == "filters"]
    assert stage_one and hist[1][0] == {"stage": "filters", "cached": hist[1][0]["cached"], "trained": stage_one}
    assert rows[0]["extra"]["objective_report"]["filter_params_teacher"] == 2 * (32 * 32 + 32 + 32 * 2 + 2)
    from distilbench.training.runs.provenance import code_fingerprint
    assert {r["extra"]["code_fingerprint"] for r in rows} == {code_fingerprint()}
    assert "filters" in rows[0]["extra"]["stage_times_s"]
    assert main(args[:2] + ["ted-kl"] + args[3:]) == 0  # ted-kl shares TED's Stage I cache
    kl = ResultsStore(tmp_path / "results.sqlite").rows(objective="ted-kl")
    assert all("cached" in r["extra"]["history"][0] for r in kl)


def test_finetune_student_option_adds_a_per_seed_stage_before_filters():
    _, _, _, ted, _ = _objective(ted_finetune_student=True)
    stages = ted.stages()
    assert [s.name for s in stages] == ["finetune", "filters", "distil"]
    assert stages[0].train_student and not stages[1].shared and stages[1].needs_student
    assert ted.student_mode == "train"
    ted.begin_stage(stages[0])
    assert not any(p.requires_grad for p in ted.parameters())  # only the student learns while it is fine-tuned
    logits, y = torch.tensor([[2.0, -1.0], [0.0, 1.0]]), torch.tensor([0, 0])
    out = ted(Outputs(logits, None), None, {"labels": y}, stages[0])
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_default_beta_is_the_objectives_own_and_enters_the_identity():
    assert get_objective("ted").param_values(RunConfig())["beta"] == 100.0
    assert get_objective("hid-seq").param_values(RunConfig())["beta"] == 1.0
    assert get_objective("ted").param_values(RunConfig(beta=7.0))["beta"] == 7.0
    # a causal LM: the paper's alpha_2 for language modelling (001 §4.3); LWD keeps its own
    assert get_objective("ted").param_values(RunConfig(task="wikitext2"))["beta"] == 0.1
    assert get_objective("ted-kl").param_values(RunConfig(task="wikitext2"))["beta"] == 0.1
    assert get_objective("lwd").param_values(RunConfig(task="wikitext2"))["beta"] == 1.0
    assert get_objective("ted").param_values(RunConfig(task="wikitext2", beta=100.0))["beta"] == 100.0
    _, _, _, ted, _ = _objective()
    assert ted.beta == 100.0 and ted.identity()["beta"] == 100.0


def _trainable(ted):
    """Which filter groups of a TED objective train now: names among t_filters, t_heads, s_filters, s_heads."""
    groups = ("t_filters", "t_heads", "s_filters", "s_heads")
    return {g for g in groups if any(p.requires_grad for p in getattr(ted, g).parameters())}


# paper 001 Table 6: (options, what Stage I trains, what Stage II trains among the filters, how W_s starts Stage II)
TABLE6 = {
    "abl1": (dict(ted_student_filters="none"), {"t_filters", "t_heads"}, set(), "absent"),
    "abl2": (dict(ted_teacher_filters="none", ted_student_filters="random"), None, {"s_filters"}, "random"),
    "abl3": (dict(ted_student_filters="random"), {"t_filters", "t_heads"}, {"s_filters"}, "random"),
    "abl4": (dict(ted_teacher_filters="none", ted_student_filters="train"), {"s_filters", "s_heads"}, {"s_filters"}, "stage I"),
    "ted": (dict(), {"t_filters", "t_heads"}, {"s_filters"}, "copy"),
}


@pytest.mark.parametrize("row", sorted(TABLE6))
def test_table6_rows_train_exactly_their_filters(row):
    options, stage_one, stage_two, start = TABLE6[row]
    _, _, _, ted, _ = _objective(**options)
    stages = ted.stages()
    assert [s.name for s in stages] == (["distil"] if stage_one is None else ["filters", "distil"])
    if stage_one is not None:
        ted.begin_stage(stages[0])
        assert _trainable(ted) == stage_one
        assert stages[0].needs_student == ("s_filters" in stage_one)
    initial = [p.detach().clone() for f in ted.s_filters for p in f.parameters()]
    with torch.no_grad():  # what Stage I would have left: recognisable weights on the sides it trains
        for group in stage_one or ():
            for p in getattr(ted, group).parameters():
                p.fill_(0.5)
    ted.begin_stage(stages[-1])
    assert _trainable(ted) == stage_two
    s_weights = [p for f in ted.s_filters for p in f.parameters()]
    if start == "absent":
        assert not s_weights and ted.s_filters[0].arch == "identity"
    elif start == "random":  # as initialised: neither a copy of the teacher's nor the identity (no silent override)
        assert all(torch.equal(p, q) for p, q in zip(s_weights, initial))
        assert not torch.equal(ted.s_filters[0].net.weight, torch.eye(16))
        assert not torch.equal(ted.s_filters[0].net.weight, torch.full((16, 16), 0.5))
    else:  # "stage I" (kept) or "copy" (from the teacher filter, which Stage I left at 0.5)
        assert s_weights and all(torch.equal(p, torch.full_like(p, 0.5)) for p in s_weights)
    teacher_side = [p for f in ted.t_filters for p in f.parameters()]
    assert (not teacher_side) == (options.get("ted_teacher_filters") == "none")


def test_abl1_compares_the_student_layer_with_the_filtered_teacher_layer():
    torch.manual_seed(5)
    _, _, _, ted, _ = _objective(ted_student_filters="none", beta=3.0)
    ted.begin_stage(Stage("distil"))
    B, L = 2, 4
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    h_t = [torch.randn(B, L, 16) for _ in range(5)]
    h_s = [torch.randn(B, L, 16) for _ in range(3)]
    out = ted.intermediate(Outputs(torch.zeros(B, 2), tuple(h_s)), Outputs(torch.zeros(B, 2), tuple(h_t)),
                           {"attention_mask": mask, "labels": torch.tensor([0, 1])})
    expected = 0.0
    for k, (s, t) in enumerate([(1, 1), (2, 3)]):
        W, b = ted.t_filters[k].net.weight, ted.t_filters[k].net.bias
        real = mask.bool()
        gt = h_t[t][real] @ W.T + b
        expected += ((gt - h_s[s][real]) ** 2).mean()
    assert out.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name, options, fragment", [
    ("ted", dict(ted_finetune_student=True, ted_student_filters="random"), "--ted-finetune-student"),
    ("ted", dict(ted_finetune_student=True, ted_student_filters="none"), "has none to train"),
    ("ted-kl", dict(ted_student_filters="none"), "ted-kl compares"),
])
def test_combinations_it_cannot_honour_are_refused(name, options, fragment):
    from distilbench.errors import UsageError

    with pytest.raises(UsageError, match=fragment):
        get_objective(name).check_options(RunConfig(**options), get_task("sst2"))
    with pytest.raises(UsageError, match=fragment):
        _objective(name, **options)


def test_student_without_filters_needs_the_teachers_width():
    from distilbench.errors import UsageError

    tok, teacher, _ = _models()
    ctx = Context(get_task("sst2"), RunConfig(ted_student_filters="none"), [(1, 1)], 8, 16, teacher_model=teacher)
    with pytest.raises(UsageError, match=r"equal hidden sizes \(student 8, teacher 16\)"):
        get_objective("ted")(ctx)


def test_cli_refuses_an_unhonoured_combination_with_exit_2_writing_nothing(tiny_run_args, tmp_path, capsys):
    args = ["run", "--objective", "ted-kl", "--ted-student-filters", "none", "--seeds", "1", *tiny_run_args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ted-student-filters none" in err[0]
    assert not (tmp_path / "results.sqlite").exists()

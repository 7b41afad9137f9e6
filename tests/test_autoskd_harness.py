"""AutoSKD on the harness (paper 003): the multi-teacher objectives' losses by hand, only the sampled teacher running
in a step, θ a distribution after every update, Eq. 8 between the phases, candidates retrained and chosen on the
selection split, and the CLI with a team of tiny teachers (stored θ, skipped rerun, bad input)."""
from __future__ import annotations

import math
import os
import sqlite3
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from distilbench.cli import main
from distilbench.config import RunConfig
from distilbench.data.batching import encode, subsample
from distilbench.training.loop.harness import TeacherSource, train
from distilbench.training.loop.parallel import make_accelerator
from distilbench.models.loading import load_classifier, load_tokenizer
from distilbench.objectives import Context, Outputs, Stage, get_objective
from distilbench.data.tasks import get_task, load_split

torch.set_num_threads(1)


def _ctx(n=3, seed=0, team=None, student_params=None, **cfg):
    return Context(get_task("rte"), RunConfig(**cfg), [(1, 1)], 8, 8, num_teachers=n, seed=seed,
                   team=team or [{"name": f"t{i}", "params": 10 * (i + 1)} for i in range(n)], student_params=student_params)


def _soft_ce(student_row, teacher_row, scale):
    p = [math.exp(scale * v) for v in teacher_row]
    p = [v / sum(p) for v in p]
    log_z = math.log(sum(math.exp(v) for v in student_row))
    return -sum(pc * (s - log_z) for pc, s in zip(p, student_row))


ZS = [[0.3, -1.2], [2.0, 0.5], [-0.7, -0.1]]
ZT = [[[1.5, -0.5], [0.2, 0.9], [-2.0, 1.0]], [[0.1, 0.4], [3.0, -1.0], [0.0, 0.0]], [[-1.0, 2.5], [0.7, 0.7], [1.1, -0.3]]]


def test_skd_loss_is_eq3_by_hand_and_only_the_student_learns():
    obj = get_objective("skd")(_ctx(theta_init="0.5,0.3,0.2"))
    assert torch.allclose(obj.theta, torch.tensor([0.5, 0.3, 0.2]))
    torch.manual_seed(0)
    i = obj.choose_teacher(0, 10)
    zs = torch.tensor(ZS, requires_grad=True)
    zt = torch.tensor(ZT[i], requires_grad=True)
    out = obj(Outputs(zs), Outputs(zt), {"labels": torch.tensor([0, 1, 0])}, Stage("distil"))
    theta_i = [0.5, 0.3, 0.2][i]
    expected = sum(_soft_ce(s, t, theta_i) for s, t in zip(ZS, ZT[i])) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    out.loss.backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None  # the teacher never learns
    assert list(obj.parameters()) == []  # a fixed θ is a buffer: nothing of the objective trains


def test_skd_random_theta_is_a_seeded_distribution():
    a = get_objective("skd")(_ctx(theta_init="random", seed=3)).theta
    b = get_objective("skd")(_ctx(theta_init="random", seed=3)).theta
    c = get_objective("skd")(_ctx(theta_init="random", seed=4)).theta
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a >= 0).all() and a.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_avgkd_loss_uses_the_mean_of_all_teachers_by_hand():
    obj = get_objective("avgkd")(_ctx())
    assert obj.choose_teacher(0, 10) == [0, 1, 2]
    zs = torch.tensor(ZS, requires_grad=True)
    out = obj(Outputs(zs), [Outputs(torch.tensor(z)) for z in ZT], {"labels": torch.tensor([0, 1, 0])}, Stage("distil"))
    mean = [[sum(ZT[k][r][c] for k in range(3)) / 3 for c in range(2)] for r in range(3)]
    assert out.loss.item() == pytest.approx(sum(_soft_ce(s, t, 1.0) for s, t in zip(ZS, mean)) / 3, rel=1e-6)


def test_default_m_is_the_rule_of_thumb_on_parameter_counts():
    team = [{"name": "big", "params": 100}, {"name": "small", "params": 20}, {"name": "same", "params": 50}]
    assert get_objective("autoskd")(_ctx(team=team, student_params=50)).m == 2  # smaller, and the student's own size
    assert get_objective("autoskd")(_ctx(team=team, student_params=30)).m == 1
    assert get_objective("autoskd")(_ctx(team=team, student_params=50, autoskd_m=0)).m == 0


# ------------------------------------------------------------------------------------------ on the harness, tiny models


class _Tiny(nn.Module):
    """A bag-of-embeddings classifier: enough for the harness (logits from input_ids, attention_mask)."""

    def __init__(self, vocab: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.EmbeddingBag(vocab, 8, mode="sum")
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False):
        mask = attention_mask.float() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.float)
        h = self.emb(input_ids, per_sample_weights=mask) / mask.sum(1, keepdim=True)
        return type("Out", (), {"logits": self.head(h), "hidden_states": None})()


@pytest.fixture(scope="module")
def rte_slice(glue_dir):
    task = get_task("rte")
    tok = load_tokenizer("minilm-l6")
    examples = subsample(load_split(task, "train", glue_dir), 80)
    return task, encode(tok, examples[:64], 64), encode(tok, examples[64:], 64), tok.vocab_size


def _run_search(rte_slice, mode="sswo", epochs=2.0, **cfg):
    task, train_enc, select_enc, vocab = rte_slice
    config = RunConfig(batch_size=8, epochs=epochs, lr=1e-2, theta_update=mode, theta_lr=1e-2, **cfg)
    teachers = [_Tiny(vocab, 10 + k) for k in range(3)]
    student = _Tiny(vocab, 1)
    ran: list[list[int]] = []
    for k, t in enumerate(teachers):
        t.register_forward_hook(lambda mod, args, out, k=k: ran[-1].append(k))
    obj = get_objective("autoskd")(_ctx(n=3, student_params=1, **config.__dict__))
    chosen: list = []
    thetas: list[torch.Tensor] = []
    choose, outer = obj.choose_teacher, obj.outer_step

    def spy_choose(step, total):
        ran.append([])
        chosen.append(choose(step, total))
        return chosen[-1]

    def spy_outer(ctx):
        logged = outer(ctx)
        thetas.append(obj.cat.probs())
        return logged

    obj.choose_teacher, obj.outer_step = spy_choose, spy_outer
    source = TeacherSource(teachers, obj.needs)  # no cache: teachers really run
    result = train(student, obj, source, train_enc=train_enc, select_enc=select_enc, task=task, cfg=config, seed=0,
                   accelerator=make_accelerator(config), epochs=epochs, lr=config.lr)
    return obj, result, ran, chosen, thetas


@pytest.mark.parametrize("mode", ["sswo", "cr"])
def test_search_keeps_theta_a_distribution_and_masks_between_phases(rte_slice, mode):
    obj, result, ran, chosen, thetas = _run_search(rte_slice, mode, autoskd_m=1)
    steps = len(chosen)
    assert steps == 2 * math.ceil(32 / 8)  # the search trains on the distillation half (32 of 64) for 2 epochs
    for theta in thetas:  # a distribution after every update
        assert (theta >= 0).all() and theta.sum().item() == pytest.approx(1.0, abs=1e-6)
    half = math.ceil(steps / 2)
    assert len(obj.dropped) == 1 and obj.phase1 is not None
    dropped = obj.dropped[0]
    assert dropped == min(range(3), key=lambda j: (obj.phase1[j], j))  # Eq. 8: the smallest phase-1 weight
    assert all(theta[dropped] == 0 for theta in thetas[half:]) and dropped not in chosen[half:]
    assert not any(t == dropped for t in chosen[half:])
    assert len(obj.history) == steps - half  # θ after each phase-2 step
    assert any(not torch.equal(thetas[0], t) for t in thetas[1:half])  # θ learned in phase 1
    assert result.history[0]["stage"] == "search" and "theta_sampled" in result.history[0]


def test_only_the_sampled_teacher_runs_in_a_step(rte_slice):
    obj, _, ran, chosen, _ = _run_search(rte_slice, "sswo", epochs=1.0)
    assert len(ran) == len(chosen) > 0
    for teachers_run, i in zip(ran, chosen):
        assert set(teachers_run) == {i}, (teachers_run, i)  # on the step's batch and on the validation batch
        assert len(teachers_run) == 2  # once on the distillation batch (reused by the look-ahead), once on validation


def test_theta_is_not_trained_by_the_student_optimiser(rte_slice):
    obj, *_ = _run_search(rte_slice, "sswo", epochs=1.0)
    assert not obj.cat.theta.requires_grad
    assert [p for p in obj.parameters() if p.requires_grad] == []


def test_candidates_then_retrain_with_a_fixed_candidate(rte_slice):
    obj, *_ = _run_search(rte_slice, "sswo", candidates=3, autoskd_m=0)
    cands = obj.candidates()
    assert 1 <= len(cands) <= 3
    for c in cands:
        assert c.sum().item() == pytest.approx(1.0, abs=1e-6)
    obj.use_candidate(0, cands[0])
    assert [s.name for s in obj.stages()] == ["distil"] and obj.candidates() == []
    before = cands[0].clone()
    torch.manual_seed(0)
    draws = [obj.choose_teacher(s, 100) for s in range(200)]
    assert all(before[d] > 0 for d in draws)
    obj.candidate_done(0, 0.7)
    report = obj.report()
    assert report["chosen_candidate"] == 0 and report["theta"] == [round(float(x), 6) for x in before]


# ------------------------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def tiny_team(tmp_path_factory, tiny_teacher):
    from tiny import tiny_bert

    small = tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert-small", layers=2, hidden=16, heads=2, seed=1)
    return [str(tiny_teacher), str(small), f"{tiny_teacher}@first-k"]


def _rows(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM runs")]
    conn.close()
    return rows


def test_cli_autoskd_team_run_stores_theta_and_candidates_and_skips_on_rerun(tiny_run_args, tiny_team, capsys):
    team = ",".join(tiny_team[:2] + [f"{tiny_team[0]}@layers:1,2"])  # a layer list's commas stay inside its member
    argv = ["run", *tiny_run_args, "--objective", "autoskd", "--teachers", team, "--student-layers", "2",
            "--candidates", "2", "--seeds", "2", "--epochs", "2"]
    assert main(argv) == 0
    results = Path(tiny_run_args[tiny_run_args.index("--results") + 1])
    rows = [r for r in _rows(results) if r["objective"] == "autoskd"]
    assert sorted(r["seed"] for r in rows) == [0, 1]
    for r in rows:
        extra = json.loads(r["extra"])
        rep = extra["objective_report"]
        assert extra["team"] == [tiny_team[0], tiny_team[1], f"{tiny_team[0]}@layers:1,2"]
        assert len(rep["theta_phase1"]) == 3 and sum(rep["theta_phase1"]) == pytest.approx(1.0, abs=1e-5)
        assert rep["m"] == 2 and len(rep["dropped"]) == 2  # the smaller teacher and the student-sized one are weak
        assert 1 <= len(rep["candidates"]) <= 2 and rep["chosen_candidate"] is not None
        assert rep["candidate_select_scores"][rep["chosen_candidate"]] == max(rep["candidate_select_scores"])
        assert extra["select_score"] == rep["candidate_select_scores"][rep["chosen_candidate"]]
        assert [h["stage"] for h in extra["history"] if "epoch" in h] == ["search", "search", "distil", "distil"]
        assert len(json.loads(r["params"])["team"]) == 3  # the team's teacher keys are part of the identity
    err = capsys.readouterr().err
    assert "θ after phase 1:" in err and "<- chosen" in err and "Eq. 8 drops m=2" in err
    before = _rows(results)
    assert main(argv) == 0  # nothing to train: rows unchanged
    assert _rows(results) == before

    out = results.parent / "report"  # θ per phase as a table and a bar chart (paper 003, Figure 2)
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    text = (out / "README.md").read_text()
    rule = json.loads(rows[0]["extra"])["objective_report"]["theta_update"].upper()  # the section names SSWO or CR
    assert "## 6. AutoSKD: learned categorical distributions" in text and f"![AutoSKD theta on rte ({rule})](theta-rte.png)" in text
    assert f"### rte, θ update {rule}, config `" in text
    rep = json.loads(rows[0]["extra"])["objective_report"]
    assert f"{rep['theta_phase1'][0]:.3f}" in text or len(rows) > 1
    assert (out / "theta-rte.png").stat().st_size > 1000


@pytest.mark.parametrize("objective", ["skd", "avgkd"])
def test_cli_baselines_run_on_the_team(tiny_run_args, tiny_team, objective):
    argv = ["run", "--objective", objective, "--teachers", ",".join(tiny_team[:2]), "--no-baseline", *tiny_run_args]
    assert main(argv) == 0
    rows = _rows(Path(tiny_run_args[tiny_run_args.index("--results") + 1]))
    assert [r["objective"] for r in rows] == [objective]


@pytest.mark.parametrize("extra, message", [
    (["--objective", "kd", "--teachers", "A,B"], "--teachers is for multi-teacher objectives"),
    (["--objective", "autoskd"], "needs a team of at least two teachers"),
    (["--objective", "autoskd", "--teachers", "TINY,TINY"], "names the same teacher twice"),
    (["--objective", "autoskd", "--teachers", "TINY,TINY@random"], "takes a layer-copying init"),
    (["--objective", "autoskd", "--teachers", "TINY,TINY@layers:9"], "out of range"),
    (["--objective", "autoskd", "--teachers", "TINY,nonexistent-model-xyz"], "nonexistent-model-xyz"),
    (["--objective", "autoskd", "--teachers", "TINY,TINY@first-k", "--theta-update", "darts"], "--theta-update: invalid choice: 'darts'"),
    (["--objective", "autoskd", "--teachers", "TINY,TINY@first-k", "--task", "stsb"], "regression task"),
])
def test_cli_bad_team_input_exits_2_with_one_line(tiny_run_args, tiny_teacher, capfd, monkeypatch, extra, message):
    from test_cli import expect_usage_error

    argv = ["run", *tiny_run_args, *[x.replace("TINY", str(tiny_teacher)) for x in extra]]
    line = expect_usage_error(argv, Path(tiny_run_args[tiny_run_args.index("--results") + 1]), capfd, monkeypatch)
    assert message in line, line


def test_search_runs_a_multi_teacher_objective_on_its_team(tiny_run_args, tiny_team, tmp_path):
    argv = ["search", *tiny_run_args, "--objective", "autoskd", "--teachers", ",".join(tiny_team), "--student-layers", "2",
            "--trials", "1", "--epochs", "2", "--study", "autoskd-team", "--out", str(tmp_path / "search")]
    assert main(argv) == 0
    assert "Trials: 1 (1 complete" in (tmp_path / "search" / "README.md").read_text()


def test_a_team_splits_at_commas_but_keeps_layer_lists_whole():
    from distilbench.training.runs.plan import split_team

    assert split_team("a@layers:1,2,3,b") == ["a@layers:1,2,3", "b"]
    assert split_team("a, 2l-teacher") == ["a", "2l-teacher"]  # a name may start with a digit
    assert split_team("a@layers:1, 2,b@first-k,") == ["a@layers:1,2", "b@first-k"]
    assert split_team("a@first-k,3") == ["a@first-k", "3"]  # only a layer list continues

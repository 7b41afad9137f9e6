"""Task-agnostic distillation (`distilbench pretrain`): the label-free loss by formula, what learns, the refusals, the
budget and data order, resume after SIGKILL equal to an uninterrupted run, and the saved student loading with
transformers and fine-tuning through `distilbench run --init pretrained:FOLDER`."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distilbench.cli import main
from distilbench.config import RunConfig
from distilbench.data.corpus import GeneralTask
from distilbench.models.encoders import general_student
from distilbench.objectives import Context, Outputs, get_objective
from distilbench.objectives.layerwise import label_free, without_labels
from distilbench.results.store import ResultsStore
from distilbench.training.families import general

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat dog ran far away big small red blue green old new".split()


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    rng = np.random.RandomState(0)
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, rng.randint(3, 15))) for _ in range(1500)) + "\n")
    return path


def _args(teacher: Path, text: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--teacher", str(teacher), "--corpus", str(text), "--out", str(out), "--max-length", "24",
            "--batch-size", "8", "--student-layers", "2", "--mixed-precision", "no", *extra]


# --------------------------------------------------------------------------------------------- the loss by formula
def _ctx(pairs, hidden=(8, 8), heads=(2, 2)) -> Context:
    return Context(GeneralTask("t"), RunConfig(), pairs, hidden[0], hidden[1], student_heads=heads[0], teacher_heads=heads[1])


def test_the_label_free_loss_is_the_weighted_intermediate_term_alone_padding_excluded():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": mask}
    hs = tuple(torch.randn(2, 4, 8, requires_grad=True) for _ in range(3))
    ht = tuple(torch.randn(2, 4, 8) for _ in range(3))
    scores_s = [{"scores": torch.randn(2, 2, 4, 4, requires_grad=True)} for _ in range(2)]
    scores_t = [{"scores": torch.randn(2, 2, 4, 4)} for _ in range(2)]
    student, teacher = Outputs(None, hs, scores_s), Outputs(None, ht, scores_t)
    obj = get_objective("att-mse+0.5*hid-seq")(_ctx([(2, 2)]))
    out = obj.label_free(student, teacher, batch)
    # by formula: Att-MSE over real (query, key) pairs and heads; Hid-Seq's MSE over real tokens and the hidden size
    real = (mask[:, :, None] * mask[:, None, :]).bool()[:, None].expand(-1, 2, -1, -1)
    att = ((scores_s[1]["scores"] - scores_t[1]["scores"]) ** 2)[real].mean()
    tok = mask.bool()
    hid = ((hs[2] - ht[2]) ** 2)[tok].mean()
    assert set(out.terms) == {"att-mse", "hid-seq"}  # no CE, no KD: nothing needs a label or a head
    assert torch.allclose(out.terms["att-mse"], att) and torch.allclose(out.terms["hid-seq"], hid)
    assert torch.allclose(out.loss, att + 0.5 * hid)
    out.loss.backward()
    assert hs[2].grad.abs().sum() > 0 and hs[1].grad is None and hs[0].grad is None  # only the mapped layer learns
    assert hs[2].grad[0, 3].abs().sum() == 0  # the padded token gets no gradient


def test_which_objectives_distil_without_labels():
    layer = ("att-mse", "att-kl", "hid-seq", "hid-cls", "hid-cls-contrast", "val-kl", "lwd", "att-kl+val-kl")
    assert all(without_labels(get_objective(n), mlm_head=False) is None for n in layer)
    assert all(without_labels(get_objective(n), mlm_head=True) is None for n in ("kd", "kd-reverse", "gkd-jsd"))
    assert "MLM head" in without_labels(get_objective("kd"), mlm_head=False) and label_free(get_objective("kd"))
    assert "stages" in without_labels(get_objective("ted")) and "part, ted," in without_labels(get_objective("att-mse+ted"))
    assert "team" in without_labels(get_objective("autoskd")) and "no teacher" in without_labels(get_objective("none"))


def test_kd_on_the_mlm_head_by_formula_at_the_masked_positions_only():
    torch.manual_seed(1)
    s_logits, t_logits = torch.randn(2, 5, 11, requires_grad=True), torch.randn(2, 5, 11)
    chosen = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 1, 0, 0]]).bool()
    obj = get_objective("kd")(Context(GeneralTask("t"), RunConfig(temperature=2.0), [], 8, 8))
    out = obj.label_free(Outputs(s_logits), Outputs(t_logits), {"mlm_mask": chosen, "attention_mask": torch.ones(2, 5)})
    p_t, logp_s = torch.softmax(t_logits[chosen] / 2, -1), torch.log_softmax(s_logits[chosen] / 2, -1)
    expected = 4 * (p_t * (p_t.log() - logp_s)).sum(-1).mean()  # T^2 * mean KL(p_T || p_S) over the 3 masked positions
    assert torch.allclose(out.loss, expected) and set(out.terms) == {"kd"}
    out.loss.backward()
    assert s_logits.grad[~chosen].abs().sum() == 0 and s_logits.grad[chosen].abs().sum() > 0


def test_reverse_kd_on_the_mlm_head_by_formula():
    torch.manual_seed(2)
    s_logits, t_logits = torch.randn(2, 4, 7, requires_grad=True), torch.randn(2, 4, 7)
    chosen = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]]).bool()
    obj = get_objective("kd-reverse")(Context(GeneralTask("t"), RunConfig(temperature=3.0), [], 8, 8))
    out = obj.label_free(Outputs(s_logits), Outputs(t_logits), {"mlm_mask": chosen})
    p_s, logp_t = torch.softmax(s_logits[chosen] / 3, -1), torch.log_softmax(t_logits[chosen] / 3, -1)
    expected = 9 * (p_s * (p_s.log() - logp_t)).sum(-1).mean()  # T^2 * mean KL(p_S || p_T) over the masked positions
    assert torch.allclose(out.loss, expected) and set(out.terms) == {"kd-reverse"}


def test_masking_by_formula():
    ids = torch.arange(100, 100 + 4 * 200).view(4, 200)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS], [SEP]
    attention = torch.ones_like(ids)
    attention[3, 150:] = 0
    masked, chosen = general.mask_tokens(ids, attention, (101, 102, 0), 103, 30000, torch.Generator().manual_seed(5))
    again = general.mask_tokens(ids, attention, (101, 102, 0), 103, 30000, torch.Generator().manual_seed(5))
    assert torch.equal(masked, again[0]) and torch.equal(chosen, again[1])  # a function of the generator's seed
    assert not chosen[:, 0].any() and not chosen[:, -1].any() and not chosen[3, 150:].any()  # specials, padding: never
    share = chosen.sum().item() / (4 * 198 - 50)
    assert 0.11 < share < 0.19  # 15% of the real non-special tokens
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    as_mask = (masked[chosen] == 103).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert 0.7 < as_mask < 0.9 and 0.03 < kept < 0.2
    one = general.mask_tokens(torch.tensor([[101, 500, 102]]), torch.ones(1, 3), (101, 102), 103, 30000,
                              torch.Generator().manual_seed(0))[1]
    assert one.tolist() == [[False, True, False]]  # a batch always has a position to predict


# --------------------------------------------------------------------------------------------- budget and data order
def test_the_budget_and_the_data_order():
    assert general.Budget(steps=7).total_steps(100, 8, 24) == 7
    assert general.Budget(tokens=1000).total_steps(100, 8, 24) == math.ceil(1000 / (8 * 24))
    assert general.Budget().total_steps(100, 8, 24) == 13  # one pass
    epoch0 = np.concatenate([general.batch_positions(20, 8, 3, k) for k in range(3)])
    assert sorted(epoch0.tolist()) == list(range(20))  # every block once an epoch, the last batch short
    assert not np.array_equal(general.batch_positions(20, 8, 3, 3), general.batch_positions(20, 8, 3, 0))
    assert np.array_equal(general.batch_positions(20, 8, 3, 4), general.batch_positions(20, 8, 3, 4))


# --------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("extra, message", [
    (("--objective", "kd"), "needs a teacher with an MLM head, and teacher"),
    (("--objective", "att-mse+ted"), "has a part, ted,"),
    (("--objective", "att-mse", "--mixed-precision", "fp16"), "fp32 or bf16"),
    (("--objective", "att-mse", "--max-length", "300"), "longer than teacher"),
    (("--objective", "ted"), "stages of its own"),
    (("--objective", "att-mse", "--steps", "0"), "--steps must be a count >= 1"),
    (("--objective", "att-mse", "--steps", "3", "--tokens", "9"), "not both"),
    (("--objective", "att-mse", "--init", "pretrained:x"), "starts from random or teacher layers"),
    (("--objective", "att-mse", "--schedule", "sequential"), None),  # not a pretraining flag: argparse refuses it
    (("--objective", "att-mse", "--init", "random", "--student-hidden", "15"), "multiple of the teacher's 2 attention heads"),
    (("--objective", "att-mse", "--init", "first-k", "--student-hidden", "16"), "sets the width of a random student"),
    (("--objective", "att-mse", "--init", "random", "--student-hidden", "0"), "--student-hidden must be a width >= 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_teacher, text, tmp_path, capsys, extra, message):
    out = tmp_path / "student"
    assert main(_args(tiny_teacher, text, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distilbench: error:") and (message is None or message in err[0])
    assert not out.exists() and not out.with_name("student.checkpoint").exists()


def test_a_folder_that_is_not_this_student_is_refused(tiny_teacher, text, tmp_path, capsys):
    out = tmp_path / "student"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_args(tiny_teacher, text, out, "--objective", "hid-seq", "--steps", "2")) == 2
    assert "is not this pretraining's student" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------------------------- resume, save, fine-tune
@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory) -> Path:
    """A tiny BERT with an MLM head (``BertForMaskedLM``) and the embedded MiniLM tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    from distilbench.models.loading import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "mlm-teacher"
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("objective, teacher", [("att-kl+hid-seq", "tiny_teacher"), ("kd", "mlm_teacher")])
def test_resume_after_sigkill_gives_the_uninterrupted_student(objective, teacher, text, tmp_path, capsys, request):
    """A real SIGKILL after step 7 (checkpoints every 3 steps: the last at step 6), then the same command again: the
    student equals an uninterrupted run's, tensor for tensor (KD on an MLM head: its masks too are the same)."""
    tiny_teacher = request.getfixturevalue(teacher)
    args = ("--objective", objective, "--init", "random", "--steps", "10", "--checkpoint-every", "3")
    whole = tmp_path / "whole"
    assert main(_args(tiny_teacher, text, whole, *args)) == 0
    killed = tmp_path / "killed"
    script = ("import os, signal, sys\n"
              "import torch\n"
              f"torch.set_num_threads({torch.get_num_threads()})\n"  # as this process: float sums depend on the threads
              "from distilbench.training.families import general\n"
              "from distilbench.cli import main\n"
              "keep = general.after_step\n"
              "def after(plan, state):\n"
              "    keep(plan, state)\n"
              "    if state.step == 7:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "general.after_step = after\n"
              f"sys.exit(main({_args(tiny_teacher, text, killed, *args)!r}))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not killed.exists() and (tmp_path / "killed.checkpoint" / general.STATE).is_file()
    assert torch.load(tmp_path / "killed.checkpoint" / general.STATE, weights_only=True)["step"] == 6
    capsys.readouterr()
    assert main(_args(tiny_teacher, text, killed, *args)) == 0
    assert "at step 6/10" in capsys.readouterr().err  # it resumed: it did not start again
    a, b = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed.checkpoint").exists()  # removed once the student is saved
    meta = json.loads((killed / general.META).read_text())
    assert meta["key"] == json.loads((whole / general.META).read_text())["key"] and meta["steps"] == 10
    if objective != "kd":  # two random MLM heads agree almost everywhere already: only the layers' loss surely falls
        assert meta["held_out_loss"]["after"] < meta["held_out_loss"]["before"]


def test_the_saved_student_loads_with_transformers_and_fine_tunes(tiny_teacher, text, tmp_path, tiny_run_args, capsys):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "general"
    assert main(_args(tiny_teacher, text, out, "--objective", "hid-cls", "--init", "first-k", "--steps", "4")) == 0
    model, tok = AutoModel.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and tok("a cat")["input_ids"][0] == tok.cls_token_id
    card = (out / general.CARD).read_text()
    assert f"--init pretrained:{out}" in card and "Held-out distillation loss" in card
    assert main(_args(tiny_teacher, text, out, "--objective", "hid-cls", "--init", "first-k", "--steps", "4")) == 0
    assert "nothing to do" in capsys.readouterr().err  # the same command again: already done
    assert main(["run", *tiny_run_args, "--objective", "none", "--init", f"pretrained:{out}"]) == 0
    meta = json.loads((out / general.META).read_text())
    with ResultsStore(tiny_run_args[tiny_run_args.index("--results") + 1]) as db:
        (row,) = db.rows()
    made = row["extra"]["general_student"]  # how the init was made, kept in the row for the report
    assert general_student(out) == made
    saved = tmp_path / "task-student"  # a task run's saved student has a distilbench.json too: not a general student
    saved.mkdir()
    (saved / general.META).write_text(json.dumps({"key": "k", "objective": "kd", "init": "layers:1,2"}))
    assert general_student(saved) is None and general.finished_key(saved) is None
    assert made["key"] == meta["key"] and made["objective"] == "hid-cls" and made["init"] == "layers:1,2"
    assert made["tokens"] == meta["tokens_seen"] > 0 and made["steps"] == 4 and made["held_out_loss"] == meta["held_out_loss"]


def test_kd_distils_the_mlm_head_of_a_teacher_that_has_one(tmp_path, text, mlm_teacher):
    from transformers import AutoModelForMaskedLM

    teacher = mlm_teacher
    out = tmp_path / "kd"
    assert main(_args(teacher, text, out, "--objective", "kd", "--init", "first-k", "--steps", "6")) == 0
    meta = json.loads((out / general.META).read_text())
    assert meta["identity"]["mlm"]["mask_share"] == 0.15 and "alpha_kd" not in meta["identity"]
    assert meta["held_out_loss"]["before"] > 0 and meta["held_out_loss"]["after"] != meta["held_out_loss"]["before"]
    student, source = AutoModelForMaskedLM.from_pretrained(out), AutoModelForMaskedLM.from_pretrained(teacher)
    assert student.config.num_hidden_layers == 2
    name = "bert.encoder.layer.0.attention.self.query.weight"  # copied from the teacher's layer 1, then trained
    assert not torch.equal(student.state_dict()[name], source.state_dict()[name])
    assert "MLM head" in (out / general.CARD).read_text()


def test_the_student_keeps_its_pooling_and_a_local_corpus_is_named_by_its_content(tiny_teacher, text, tmp_path):
    from distilbench.config import build_config
    from distilbench.models.loading import declared_pooling

    out = tmp_path / "mean"
    assert main(_args(tiny_teacher, text, out, "--objective", "hid-cls", "--pooling", "mean", "--steps", "2")) == 0
    assert json.loads((out / "config.json").read_text())["distilbench_pooling"] == "mean"
    assert declared_pooling(str(out)) == "mean"  # what `run --init pretrained:OUT` reads
    moved = tmp_path / "elsewhere" / "text.txt"
    moved.parent.mkdir()
    moved.write_text(text.read_text())
    cfg = build_config({"objective": "hid-seq", "teacher": str(tiny_teacher), "max_length": 24, "layer_map": "last"})
    keys = [general.plan_general(cfg, str(p), general.Budget(steps=2), 0, str(tmp_path / f"o{k}"), 5).key
            for k, p in enumerate((text, moved))]
    assert keys[0] == keys[1]  # the same text elsewhere is the same pretraining


@pytest.mark.parametrize("objective", ["att-mse", "hid-seq"])
def test_a_narrower_random_student_distils_keeps_the_heads_and_fine_tunes(objective, tiny_teacher, text, tmp_path,
                                                                            tiny_run_args):
    from transformers import AutoConfig

    out = tmp_path / "narrow"
    assert main(_args(tiny_teacher, text, out, "--objective", objective, "--init", "random", "--student-hidden", "16",
                      "--steps", "3")) == 0
    config, teacher = AutoConfig.from_pretrained(out), AutoConfig.from_pretrained(tiny_teacher)
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (16, teacher.num_attention_heads, 2)
    assert config.intermediate_size == teacher.intermediate_size // 2  # the feed-forward keeps the teacher's ratio
    meta = json.loads((out / general.META).read_text())
    assert meta["identity"]["init"] == "random:2x16" and meta["held_out_loss"]["after"] < meta["held_out_loss"]["before"]
    # a task run from a random init of that width: the width is in the init spec, so in the run's identity
    assert main(["run", *tiny_run_args, "--objective", objective, "--init", "random", "--student-hidden", "16",
                 "--student-layers", "2", "--layer-map", "last", "--no-baseline"]) == 0
    with ResultsStore(tiny_run_args[tiny_run_args.index("--results") + 1]) as db:
        (row,) = db.rows()
    assert row["init"] == "random:2x16" and row["extra"]["layer_mapping"] == ["random init from the teacher's config, 2 layers, hidden size 16"]

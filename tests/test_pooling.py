"""Sentence representation as a model property (distilbench.models.pooling): the head reads the masked mean when the
model is mean-pooled, by formula and through save/load and layer copies; the objectives that need a sentence vector use
it; TED's Stage I learns on a backbone whose first token is constant only when it reads the mean; the pooling enters
the teacher's key and the run's identity, and first-token rows keep theirs."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from distilbench.config import RunConfig
from distilbench.data.tasks import get_task
from distilbench.errors import UsageError
from distilbench.models.inits import copy_layers
from distilbench.models.loading import MODELS, declared_pooling, load_classifier
from distilbench.models.pooling import folder_pooling, model_pooling, sentence_representation, set_pooling
from distilbench.objectives import Context, Outputs, Stage, get_objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


def _bert(layers=2, hidden=16, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                                                     num_attention_heads=2, intermediate_size=32)).eval()


def _mpnet(layers=2, hidden=16, seed=0):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(seed)
    return MPNetForSequenceClassification(MPNetConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                                                      num_attention_heads=2, intermediate_size=32)).eval()


def _inputs():
    torch.manual_seed(1)
    return {"input_ids": torch.randint(5, 50, (3, 5)) * MASK, "attention_mask": MASK}


def _masked_mean(h, mask):
    out = []
    for b in range(h.shape[0]):
        n = int(mask[b].sum())
        out.append(h[b, :n].mean(0))
    return torch.stack(out)


def test_sentence_representation_by_formula_with_padding():
    h = torch.randn(3, 5, 4)
    assert torch.equal(sentence_representation(h, MASK, "cls"), h[:, 0])
    torch.testing.assert_close(sentence_representation(h, MASK, "mean"), _masked_mean(h, MASK))
    torch.testing.assert_close(sentence_representation(h, None, "mean"), h.mean(1))
    with pytest.raises(ValueError, match="cls, mean"):
        sentence_representation(h, MASK, "max")


@torch.no_grad()
def test_mean_pooled_bert_head_reads_the_masked_mean():
    model, x = _bert(), _inputs()
    first = model(**x).logits
    set_pooling(model, "mean")
    out = model(**x, output_hidden_states=True)
    pooled = torch.tanh(model.bert.pooler.dense(_masked_mean(out.hidden_states[-1], MASK)))
    torch.testing.assert_close(out.logits, model.classifier(pooled))
    assert not torch.allclose(out.logits, first)
    set_pooling(model, "cls")  # back to the checkpoint's own head: the hooks are gone
    torch.testing.assert_close(model(**x).logits, first)


@torch.no_grad()
def test_mean_pooled_mpnet_head_reads_the_masked_mean_and_ignores_padding():
    model, x = set_pooling(_mpnet(), "mean"), _inputs()
    out = model(**x, output_hidden_states=True)
    c = model.classifier
    want = c.out_proj(torch.tanh(c.dense(_masked_mean(out.hidden_states[-1], MASK))))
    torch.testing.assert_close(out.logits, want)
    # more padding changes nothing: only real tokens enter the mean
    wider = {"input_ids": F.pad(x["input_ids"], (0, 3)), "attention_mask": F.pad(MASK, (0, 3))}
    torch.testing.assert_close(model(**wider).logits, out.logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_pooling_survives_save_load_and_layer_copies(tmp_path):
    model, x = set_pooling(_bert(layers=3), "mean"), _inputs()
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["distilbench_pooling"] == "mean"
    assert folder_pooling(tmp_path / "m") == "mean" and declared_pooling(str(tmp_path / "m")) == "mean"
    loaded = load_classifier(str(tmp_path / "m"), 2, False)
    assert model_pooling(loaded) == "mean"
    torch.testing.assert_close(loaded.eval()(**x).logits, model(**x).logits)
    student, _ = copy_layers(model, (1, 3), seed=0)
    assert model_pooling(student) == "mean"
    out = student.eval()(**x, output_hidden_states=True)
    pooled = torch.tanh(student.bert.pooler.dense(_masked_mean(out.hidden_states[-1], MASK)))
    torch.testing.assert_close(out.logits, student.classifier(pooled))


def test_declared_pooling_of_models():
    assert {n: MODELS.get(n).pooling for n in MODELS} == {"minilm-l6": "mean", "mpnet-base": "mean"}
    assert declared_pooling("mpnet-base@layers:1,2,3") == "mean"
    assert declared_pooling("bert-base-uncased") == "cls"  # an MLM-pretrained hub encoder reads its [CLS]


def test_models_yaml_agrees_with_the_packaged_pooling_config():
    from distilbench.models.loading import resolve_model
    from pathlib import Path

    folder = Path(resolve_model("minilm-l6"))
    if not (folder / "1_Pooling" / "config.json").is_file():
        pytest.skip("the minilm-l6 package ships no 1_Pooling/config.json here")
    assert folder_pooling(folder) == MODELS.get("minilm-l6").pooling == "mean"


def test_ls_models_shows_each_models_pooling(capsys):
    from distilbench.cli import main

    assert main(["ls", "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("minilm-l6\t") and "\tpooling mean\t" in line for line in lines)
    assert any(line.startswith("mpnet-base\t") and "\tpooling mean\t" in line for line in lines)


# --------------------------------------------------------------------------------------------- objectives
def _ctx(name, pooling, task="rte", ds=8, dt=12, pairs=((1, 2), (2, 4))):
    cfg = RunConfig(objective=name, task=task, pooling=pooling)
    return Context(get_task(task), cfg, list(pairs), ds, dt, student_heads=2, teacher_heads=2, pooling=pooling,
                   teacher_pooling=pooling)


def _outs(d, layers, seed):
    g = torch.Generator().manual_seed(seed)
    return Outputs(torch.randn(3, 2, generator=g), tuple(torch.randn(3, 5, d, generator=g) for _ in range(layers + 1)))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_hid_cls_compares_the_models_sentence_representations(pooling):
    obj = get_objective("hid-cls")(_ctx("hid-cls", pooling))
    s, t = _outs(8, 2, 1), _outs(12, 4, 2)
    batch = {"attention_mask": MASK, "labels": torch.tensor([0, 1, 1])}
    pool = (lambda h: h[:, 0]) if pooling == "cls" else (lambda h: _masked_mean(h, MASK))
    want = sum(F.mse_loss(obj.proj[k](pool(s.hidden_states[a])), pool(t.hidden_states[b]))
               for k, (a, b) in enumerate([(1, 2), (2, 4)]))
    torch.testing.assert_close(obj.intermediate(s, t, batch), want)


def test_hid_cls_contrast_reads_the_mean_when_mean_pooled():
    obj = get_objective("hid-cls-contrast")(_ctx("hid-cls-contrast", "mean"))
    s, t = _outs(8, 2, 1), _outs(12, 4, 2)
    batch = {"attention_mask": MASK, "labels": torch.tensor([0, 1, 1])}
    want = 0.0
    for k, (a, b) in enumerate([(1, 2), (2, 4)]):
        z = F.normalize(obj.proj[k](_masked_mean(s.hidden_states[a], MASK)), dim=-1)
        key = F.normalize(_masked_mean(t.hidden_states[b], MASK), dim=-1)
        want = want + F.cross_entropy(z @ key.T / 0.07, torch.arange(3))
    torch.testing.assert_close(obj.intermediate(s, t, batch), want)


def _stage_one_loss(pooling: str, steps: int = 150) -> list[float]:
    """TED's Stage I on a backbone whose first token is the same vector for every input, while the label is written
    into the other tokens (a separable toy task): three binary filter heads, as in the issue's diagnosis."""
    torch.manual_seed(0)
    ctx = _ctx("ted", pooling, task="sst2", ds=8, dt=8, pairs=((1, 1), (2, 2), (3, 3)))
    ted = get_objective("ted")(ctx)
    stage = next(s for s in ted.stages() if s.name == "filters")
    ted.begin_stage(stage)
    opt = torch.optim.Adam([p for p in ted.parameters() if p.requires_grad], lr=1e-2)
    const = torch.randn(8)
    losses = []
    for step in range(steps):
        labels = torch.randint(0, 2, (16,))
        mask = torch.ones(16, 6, dtype=torch.long)
        mask[::2, 4:] = 0  # padding included
        h = torch.randn(16, 6, 8) * 0.5 + (2 * labels - 1).float()[:, None, None]
        h[:, 0] = const  # the first token says nothing
        hidden = tuple(h.clone() for _ in range(4))
        teacher = Outputs(torch.zeros(16, 2), hidden)
        out = ted(None, teacher, {"attention_mask": mask, "labels": labels}, stage)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.terms["filters_t"]))
    return losses


def test_stage_one_learns_on_a_constant_first_token_only_when_mean_pooled():
    chance = 3 * math.log(2)  # three binary heads
    cls, mean = _stage_one_loss("cls"), _stage_one_loss("mean")
    assert min(cls[-20:]) > 0.95 * chance  # the first token carries no label: the heads stay at chance
    assert max(mean[-20:]) < 0.2 * chance


# --------------------------------------------------------------------------------------------- identity
def test_pooling_enters_the_teacher_key_and_first_token_keys_hold(monkeypatch):
    from distilbench.training.teachers import teacher

    monkeypatch.setattr(teacher, "model_fingerprint", lambda name: "w" * 16)
    task = get_task("rte")
    ident = lambda **kw: teacher.teacher_identity(RunConfig(**kw), "mpnet-base", task, "fp")
    assert "pooling" not in ident(pooling="cls")  # rows and teachers of first-token heads keep their keys
    assert ident(pooling="mean")["pooling"] == "mean" and ident()["pooling"] == "mean"  # the model's own: mean
    assert "pooling" not in teacher.teacher_identity(RunConfig(), "mpnet-base", get_task("wikitext2"), "fp")


def test_pooling_enters_the_run_identity():
    from distilbench.models.inits import parse_init
    from distilbench.training.runs.plan import run_identity

    record = SimpleNamespace(key="tkey")
    plan = lambda p: SimpleNamespace(cfg=RunConfig(), task=get_task("rte"), init=parse_init("first-k", 12, 3), dev=[],
                                     pooling=p)
    cls, mean = (run_identity(plan(p), get_objective("kd"), record, 0) for p in ("cls", "mean"))
    assert "pooling" not in cls and mean["pooling"] == "mean"
    assert {k: v for k, v in mean.items() if k != "pooling"} == cls


def test_student_pooling_follows_the_model_and_refuses_per_token_tasks():
    from distilbench.training.runs.plan import student_pooling

    assert student_pooling(RunConfig(), get_task("rte"), None) == "mean"  # mpnet-base's own
    assert student_pooling(RunConfig(pooling="cls"), get_task("rte"), None) == "cls"
    assert student_pooling(RunConfig(), get_task("rte"), "bert-base-uncased") == "cls"
    assert student_pooling(RunConfig(), get_task("wikitext2"), None) is None
    with pytest.raises(UsageError, match="--pooling applies to sentence"):
        student_pooling(RunConfig(pooling="mean"), get_task("wikitext2"), None)


def test_bad_pooling_is_one_line_exit_2(capsys, tmp_path):
    from distilbench.cli import main

    assert main(["run", "--pooling", "max", "--results", str(tmp_path / "r.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pooling" in err[0] and "cls" in err[0] and "mean" in err[0]
    assert not (tmp_path / "r.sqlite").exists()


# --------------------------------------------------------------------------------------------- reports
def test_first_token_caveat_from_rows():
    from distilbench.results.pooling import first_token_caveat

    old = lambda objective, teacher="mpnet-base", **extra: {"objective": objective, "teacher": teacher, "extra": extra}
    assert "not testable with first-token heads" in first_token_caveat([old("hid-cls"), old("hid-cls")])
    assert "mpnet-base" in first_token_caveat([old("ted")])
    assert first_token_caveat([old("att-kl+hid-cls")]) is not None  # a combination with a sentence part
    assert first_token_caveat([old("kd")]) is None  # reads no sentence representation beyond its head
    assert first_token_caveat([old("hid-cls", pooling="mean")]) is None  # ran with the model's own pooling
    assert first_token_caveat([old("hid-cls", teacher="bert-base-uncased")]) is None  # a cls-pooled model
    assert first_token_caveat([old("ted", pooling=None)]) is None  # a per-token task (QA, causal LM)
    assert first_token_caveat([{**old("ted", teacher="minilm-l6"), "task": "squad-devsplit"}]) is None  # stored before
    assert first_token_caveat([old("custom", reads_sentence=True)]) is not None  # the row's own flag wins


def test_report_header_and_notes_say_the_pooling(tmp_path):
    from rows import student_row  # tests/rows.py: hand-made store rows

    from distilbench.report.build import build_report

    labels = [i % 2 for i in range(20)]
    preds = lambda k: [1 - y if i < k else y for i, y in enumerate(labels)]
    rows = [student_row("hid-cls", s, preds(4 + s), labels, {}, {}) for s in range(3)]
    rows += [student_row("kd", s, preds(3 + s), labels, {"pooling": "mean"}, {}) for s in range(3)]
    build_report(rows, tmp_path / "r", command="test")
    text = (tmp_path / "r" / "README.md").read_text()
    assert "- **Pooling (the sentence representation of heads, Hid-CLS and TED's filter heads):** " \
           "cls (the first token): 3 runs; mean (over the real tokens): 3 runs" in text
    assert "**First-token heads:** `hid-cls`: not testable with first-token heads" in text
    assert "`kd`" not in text.split("**First-token heads:**")[1].split("\n")[0]


def test_report_header_says_how_each_general_student_was_made(tmp_path):
    from rows import student_row  # tests/rows.py: hand-made store rows

    from distilbench.report.build import build_report

    labels = [i % 2 for i in range(20)]
    made = {"key": "abc123", "objective": "att-mse", "init": "random:3", "teacher": "minilm-l6", "corpus": "general-local",
            "tokens": 1628724, "steps": 398, "batch_size": 32, "max_length": 128, "lr": 5e-4, "precision": "bf16",
            "held_out_loss": {"before": 2.59434, "after": 0.74203}, "git_rev": "9fbb6d2ddde3"}
    rows = [{**student_row("none", s, labels, labels, {"general_student": made}, {}), "init": "pretrained:students/g"}
            for s in range(2)]
    rows += [student_row("kd", s, labels, labels, {}, {}) for s in range(2)]  # no general student: no line
    build_report(rows, tmp_path / "r", command="test")
    lines = [x for x in (tmp_path / "r" / "README.md").read_text().splitlines() if x.startswith("- **General student")]
    assert lines == ["- **General student `pretrained:students/g`:** att-mse from `minilm-l6` into a `random:3` student on "
                     "general-local, 1,628,724 tokens (398 steps of 32 × 128, lr 0.0005, bf16); held-out distillation loss "
                     "2.5943 before, 0.7420 after; key `abc123`, revision `9fbb6d2ddde3`"]

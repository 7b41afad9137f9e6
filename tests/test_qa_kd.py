"""Extractive QA in the training code: KD on the start and end distributions equals its formula on padded windows,
gradients reach the student, a QA head loads on an encoder checkpoint, and the one training loop trains and scores a
tiny QA student (EM/F1 on the selection split) without knowing it is QA."""
from __future__ import annotations

import json
import math

import pytest
import torch

from distilbench.config import RunConfig
from distilbench.data.batching import collate
from distilbench.data.qa import encode_qa
from distilbench.data.qa_tasks import read_squad_json
from distilbench.data.tasks import get_task
from distilbench.objectives import Context, Needs, Outputs, Stage, get_objective
from distilbench.objectives.functional import span_kl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _objective(name: str, **cfg):
    return get_objective(name)(Context(get_task("squad"), RunConfig(task="squad", **cfg), [], 32, 32))


def _softmax(xs: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def _hand(zs, zt, labels, lengths, t, alpha):
    """CE and KL per window over its real tokens only, start and end averaged, then the mean over windows."""
    ce = kl = 0.0
    for b, n in enumerate(lengths):
        for x in (0, 1):
            s = [zs[b][i][x] for i in range(n)]
            r = [zt[b][i][x] for i in range(n)]
            ce += -math.log(_softmax(s, 1.0)[labels[b][x]]) / (2 * len(lengths))
            ps, pt = _softmax(s, t), _softmax(r, t)
            kl += sum(p * math.log(p / q) for p, q in zip(pt, ps)) / (2 * len(lengths))
    return ce + alpha * t * t * kl, ce, kl


@pytest.mark.parametrize("t, alpha", [(1.0, 1.0), (2.0, 0.5)])
def test_kd_on_start_and_end_equals_its_formula_on_padded_windows(t, alpha):
    torch.manual_seed(0)
    lengths = [5, 3, 4]
    zs, zt = torch.randn(3, 6, 2), torch.randn(3, 6, 2)
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    zs[mask == 0], zt[mask == 0] = 1e4, -1e4  # whatever padding holds, it must not count
    labels = torch.tensor([[1, 3], [0, 0], [2, 2]])
    out = _objective("kd", temperature=t, alpha_kd=alpha)(
        Outputs(zs), Outputs(zt), {"labels": labels, "attention_mask": mask}, Stage("distil"))
    total, ce, kl = _hand(zs.tolist(), zt.tolist(), labels.tolist(), lengths, t, alpha)
    assert out.terms["kd"].item() == pytest.approx(kl, rel=1e-5)
    assert out.terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out.loss.item() == pytest.approx(total, rel=1e-5)
    # the same windows padded further give the same loss
    wide = torch.nn.functional.pad
    again = _objective("kd", temperature=t, alpha_kd=alpha)(
        Outputs(wide(zs, (0, 0, 0, 4), value=7.0)), Outputs(wide(zt, (0, 0, 0, 4), value=-7.0)),
        {"labels": labels, "attention_mask": wide(mask, (0, 4))}, Stage("distil"))
    assert again.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_span_losses_refuse_to_guess_the_mask():
    z = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="need the attention mask"):
        _objective("kd")(Outputs(z), Outputs(z), {"labels": torch.zeros(1, 2, dtype=torch.long)}, Stage("d"))
    assert span_kl(student=z, teacher=z, mask=torch.ones(1, 3)).item() == 0.0


def tiny_qa_models(tokenizer, hidden: int = 32):
    from transformers import BertConfig, BertForQuestionAnswering

    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128)
    torch.manual_seed(0)
    return BertForQuestionAnswering(config), BertForQuestionAnswering(config)


CONTEXT = ("The final game was played in Santa Clara in February. Denver won the title after a long season. "
           "The halftime show was performed by a famous band from London.")
QUESTIONS = [("Where was the final game played?", "Santa Clara"), ("Who won the title?", "Denver"),
             ("When was the final game?", "February"), ("Where was the band from?", "London")]


@pytest.fixture(scope="module")
def tokenizer():
    from distilbench.models.loading import load_tokenizer

    return load_tokenizer("minilm-l6")


@pytest.fixture
def windows(tokenizer, tmp_path):
    qas = [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
           for i, (q, a) in enumerate(QUESTIONS * 3)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    return encode_qa(tokenizer, read_squad_json(get_task("squad"), path), max_length=32, doc_stride=8,
                     max_question_length=12)


def test_gradients_reach_the_student_and_never_the_teacher(tokenizer, windows):
    from distilbench.training.loop.outputs import model_outputs

    student, teacher = tiny_qa_models(tokenizer)
    teacher.requires_grad_(False)
    batch = collate(windows, list(range(6)), False)
    assert batch["labels"].shape == (6, 2) and batch["idx"].tolist() == list(range(6))
    s_out = model_outputs(student, batch, Needs())
    assert s_out.logits.shape == (*batch["input_ids"].shape, 2)
    out = _objective("kd")(s_out, model_outputs(teacher, batch, Needs()), batch, Stage("distil"))
    out.loss.backward()
    assert student.qa_outputs.weight.grad.abs().sum() > 0
    assert student.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_a_qa_head_loads_on_an_encoder_checkpoint(tiny_teacher):
    from distilbench.models.loading import load_classifier

    model = load_classifier(str(tiny_teacher), 2, False, attn_implementation=None, span=True)
    assert type(model).__name__ == "BertForQuestionAnswering" and model.qa_outputs.out_features == 2


def test_the_training_loop_trains_and_scores_a_qa_student(tokenizer, windows):
    from distilbench.training.loop.harness import TeacherSource, train
    from distilbench.training.loop.parallel import make_accelerator

    cfg = RunConfig(task="squad", batch_size=4, eval_batch_size=8, lr=1e-3, cpu=True)
    student, teacher = tiny_qa_models(tokenizer)
    objective = _objective("kd")
    result = train(student, objective, TeacherSource([teacher], objective.needs), train_enc=windows,
                   select_enc=windows, task=get_task("squad"), cfg=cfg, seed=0, accelerator=make_accelerator(cfg, "fp32"),
                   epochs=2, lr=1e-3)
    assert [h["epoch"] for h in result.history] == [1, 2]
    select = result.history[-1]["select"]
    assert set(select) >= {"exact", "f1", "score"} and 0.0 <= select["f1"] <= 1.0 and select["score"] == select["f1"]
    assert math.isfinite(result.history[-1]["kd"]) and math.isfinite(result.history[-1]["ce"])

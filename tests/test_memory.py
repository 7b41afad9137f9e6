"""What keeps a base-size teacher's fine-tuning small in memory without changing what it learns: micro-batches whose
gradients add up to the whole batch's, and the best epoch's weights kept on disk instead of in a second copy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import distilbench.training.loop.harness as harness
from distilbench.cli import main
from distilbench.config import RunConfig
from distilbench.data.batching import Encoded
from distilbench.training.loop.harness import TeacherSource, micro_batches, train
from distilbench.training.loop.parallel import make_accelerator
from distilbench.objectives import Context, get_objective
from distilbench.data.tasks import Example, get_task
from distilbench.training.teachers.teacher import teacher_identity

torch.set_num_threads(1)


def _bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def _enc(n: int, seed: int = 0) -> Encoded:
    rng = np.random.RandomState(seed)
    ids = [[2] + rng.randint(5, 60, size=rng.randint(3, 20)).tolist() + [3] for _ in range(n)]
    return Encoded([Example(idx=i, text_a=f"t{i}", text_b=None, label=int(rng.randint(2))) for i in range(n)], ids, None, 0)


def test_micro_batches_cover_the_batch_in_order_with_shares_summing_to_one():
    batch = {"input_ids": torch.arange(16).view(8, 2), "labels": torch.arange(8)}
    parts = list(micro_batches(batch, 3))
    assert [len(p["labels"]) for p, _ in parts] == [3, 3, 2]
    assert [s for _, s in parts] == [3 / 8, 3 / 8, 2 / 8]
    assert torch.equal(torch.cat([p["input_ids"] for p, _ in parts]), batch["input_ids"])
    assert [(p is batch, s) for p, s in micro_batches(batch, 0)] == [(True, 1.0)]
    assert [(p is batch, s) for p, s in micro_batches(batch, 8)] == [(True, 1.0)]


@pytest.mark.parametrize("objective", ["none", "kd"])
def test_micro_batched_training_makes_the_same_update_as_whole_batches(objective):
    task, cfg = get_task("rte"), RunConfig(batch_size=8, lr=1e-3, select_best_epoch=False)
    enc, select = _enc(21), _enc(5, seed=1)
    logits = torch.randn(21, 2, generator=torch.Generator().manual_seed(3))
    trained, histories = [], []
    for micro in (0, 3):
        student = _bert()
        obj = get_objective(objective)(Context(task, cfg, [], 16, 16))
        source = TeacherSource([_bert(1)], obj.needs, [logits]) if obj.uses_teacher else None
        result = train(student, obj, source, train_enc=enc, select_enc=select, task=task, cfg=cfg, seed=0,
                       accelerator=make_accelerator(cfg), epochs=2, lr=1e-3, micro_batch=micro)
        trained.append(student.state_dict())
        histories.append(result.history)
    start = _bert().state_dict()
    assert any(not torch.allclose(start[k], trained[0][k]) for k in start)  # the steps did move the weights
    for k in start:
        torch.testing.assert_close(trained[1][k], trained[0][k], rtol=1e-5, atol=1e-6)
    for whole, parts in zip(*histories):  # the logged terms are the whole batches' means too
        assert whole.keys() == parts.keys()
        for k in ("loss", "ce", "kd"):
            if k in whole:
                assert parts[k] == pytest.approx(whole[k], rel=1e-5)


def test_an_objective_that_is_not_a_mean_over_examples_refuses_micro_batches():
    task, cfg = get_task("rte"), RunConfig(batch_size=8)
    obj = get_objective("hid-cls-contrast")(Context(task, cfg, [(1, 1)], 16, 16))  # in-batch negatives
    with pytest.raises(ValueError, match="hid-cls-contrast cannot run in micro-batches"):
        train(_bert(), obj, None, train_enc=_enc(8), select_enc=_enc(4), task=task, cfg=cfg, seed=0,
              accelerator=make_accelerator(cfg), epochs=1, lr=1e-3, micro_batch=2)


def test_teacher_micro_batch_makes_another_teacher_and_is_absent_from_the_key_when_off(tiny_teacher):
    task = get_task("rte")
    off = teacher_identity(RunConfig(teacher_micro_batch=0), str(tiny_teacher), task, "fp")
    on = teacher_identity(RunConfig(teacher_micro_batch=8), str(tiny_teacher), task, "fp")
    assert "micro_batch" not in off  # teachers cached before the option existed keep their keys
    assert on == {**off, "micro_batch": 8}


def test_negative_teacher_micro_batch_is_refused(capsys):
    assert main(["teacher", "--teacher-micro-batch", "-1"]) == 2
    assert "--teacher-micro-batch must be >= 0" in capsys.readouterr().err


def test_best_epoch_weights_come_back_from_disk_and_the_file_is_removed(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    scores, seen = iter([0.5, 0.9, 0.2]), []

    def scripted(model, enc, task, cfg, accelerator):  # epoch 2 is the best on the selection split
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"accuracy": (s := next(scores)), "score": s}

    monkeypatch.setattr(harness, "evaluate", scripted)
    task, cfg = get_task("rte"), RunConfig(batch_size=8, lr=1e-3)
    student = _bert()
    result = train(student, get_objective("none")(Context(task, cfg, [], 16, 16)), None, train_enc=_enc(16), select_enc=_enc(4),
                   task=task, cfg=cfg, seed=0, accelerator=make_accelerator(cfg), epochs=3, lr=1e-3)
    assert result.best_epoch == 2 and result.best_select_score == 0.9
    final = student.state_dict()
    assert all(torch.equal(final[k], seen[1][k]) for k in final)
    assert any(not torch.equal(final[k], seen[2][k]) for k in final)
    assert list(tmp_path.iterdir()) == []


def test_the_accelerator_lets_go_of_each_trained_model_and_optimiser():
    import gc
    import weakref

    task, cfg = get_task("rte"), RunConfig(batch_size=8, lr=1e-3, select_best_epoch=False)
    acc, optimisers = make_accelerator(cfg), []
    real = torch.optim.AdamW

    class Tracked(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            optimisers.append(weakref.ref(self))

    torch.optim.AdamW = Tracked
    try:
        for seed in range(2):  # two seeds through one accelerator, as the runner does
            train(_bert(seed), get_objective("none")(Context(task, cfg, [], 16, 16)), None, train_enc=_enc(8), select_enc=_enc(4),
                  task=task, cfg=cfg, seed=seed, accelerator=acc, epochs=1, lr=1e-3)
    finally:
        torch.optim.AdamW = real
    gc.collect()
    assert len(optimisers) == 2 and all(ref() is None for ref in optimisers)  # their AdamW states are freed
    assert acc._models == [] and acc._optimizers == []

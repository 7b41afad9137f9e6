"""The teacher-output cache (``distilbench.training.teachers.teacher_cache``): cached hidden states, scores and values equal the live
teacher's at every real position (tiny BERT and MPNet), the teacher does not run when the cache covers a step, the key
changes with everything the values depend on, two concurrent fills build once, fp16 stays close."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from distilbench.config import RunConfig
from distilbench.data.batching import BatchLoader, Encoded, length_grouped_batches
from distilbench.training.loop.harness import TeacherSource, model_outputs, train
from distilbench.training.loop.parallel import make_accelerator
from distilbench.objectives import Context, Needs, get_objective
from distilbench.data.tasks import Example, get_task
from distilbench.training.teachers.teacher_cache import cache_key, open_or_build, parts_for

torch.set_num_threads(1)
NEEDS = Needs(logits=True, hidden_states=True, attentions=True, token_aligned=True)


def _model(kind: str, layers: int = 3):
    from transformers import BertConfig, BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    cls = (BertConfig, BertForSequenceClassification) if kind == "bert" else (MPNetConfig, MPNetForSequenceClassification)
    torch.manual_seed(0)
    config = cls[0](vocab_size=60, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=64, attn_implementation="eager")
    return cls[1](config).eval()


def _enc(kind: str, n: int = 23, seed: int = 0) -> Encoded:
    rng = np.random.RandomState(seed)
    pad = 0 if kind == "bert" else 1
    ids = [[2] + rng.randint(5, 60, size=rng.randint(3, 20)).tolist() + [3] for _ in range(n)]
    examples = [Example(idx=100 + i, text_a=f"t{i}", text_b=None, label=i % 2) for i in range(n)]
    return Encoded(examples, ids, None, pad)


def _run(model, needs=NEEDS):
    calls = []

    def run(batch):
        calls.append(len(batch["input_ids"]))
        with torch.no_grad():
            return model_outputs(model, batch, needs)
    return run, calls


@pytest.mark.parametrize("kind, remap", [("bert", None), ("mpnet", None), ("bert", 1)])
def test_cached_outputs_equal_the_live_teacher_at_real_positions(kind, remap, tmp_path, monkeypatch):
    """``remap`` 1: the maps are dropped and re-opened after every batch written and read (what keeps a process's
    resident share of a large cache small): the values read are the same."""
    import distilbench.training.teachers.teacher_cache as TC

    if remap is not None:
        monkeypatch.setattr(TC, "REMAP_BYTES", remap)
    model, enc = _model(kind), _enc(kind)
    run, calls = _run(model)
    cache = open_or_build(tmp_path, "teacher", enc, "tok", [1, 3], parts_for(NEEDS), "fp32", run, 3, batch_size=5)
    assert sum(calls) == len(enc)  # one pass over the data
    for ids in length_grouped_batches(enc.lengths(), 6, seed=1, epoch=0):  # training-style batches: other paddings
        batch = next(iter(BatchLoader(enc, [ids], False)))
        with torch.no_grad():
            live = model_outputs(model, batch, NEEDS)
        got = cache.outputs(batch["idx"], live.logits, "cpu")
        mask = batch["attention_mask"].bool()
        for t in (1, 3):
            assert got.hidden_states[t] is not None and got.hidden_states[2] is None  # only mapped layers are held
            assert torch.allclose(got.hidden_states[t][mask], live.hidden_states[t][mask], atol=1e-5)
            pair = mask[:, None, :, None] & mask[:, None, None, :]
            pair = pair.expand_as(live.attentions[t - 1]["scores"])
            assert torch.allclose(got.attentions[t - 1]["scores"][pair], live.attentions[t - 1]["scores"][pair], atol=1e-5)
            vm = mask[:, None, :, None].expand_as(live.attentions[t - 1]["v"])
            assert torch.allclose(got.attentions[t - 1]["v"][vm], live.attentions[t - 1]["v"][vm], atol=1e-5)
    # reopening reads the files: nothing is computed again
    again = open_or_build(tmp_path, "teacher", enc, "tok", [3, 1], parts_for(NEEDS), "fp32", run, 3)
    assert sum(calls) == len(enc) and again.folder == cache.folder


def test_fp16_cache_is_close(tmp_path):
    model, enc = _model("bert"), _enc("bert")
    c32 = open_or_build(tmp_path, "t", enc, "tok", [2], ("hidden",), "fp32", _run(model)[0], 3)
    c16 = open_or_build(tmp_path, "t", enc, "tok", [2], ("hidden",), "fp16", _run(model)[0], 3)
    assert c16.folder != c32.folder
    a, b = np.asarray(c32.arrays["hidden"]), np.asarray(c16.arrays["hidden"]).astype(np.float32)
    assert c16.arrays["hidden"].dtype == np.float16 and np.abs(a - b).max() <= 2e-3 * np.abs(a).max()


def test_key_changes_with_everything_the_values_depend_on():
    enc = _enc("bert")
    base = cache_key("teacher", enc, "tok:128", [1, 2], ("hidden",), "fp32")
    assert cache_key("teacher", enc, "tok:128", [2, 1], ("hidden",), "fp32") == base  # the layer set, not its order
    others = [cache_key("teacher2", enc, "tok:128", [1, 2], ("hidden",), "fp32"),
              cache_key("teacher", _enc("bert", seed=1), "tok:128", [1, 2], ("hidden",), "fp32"),
              cache_key("teacher", enc, "tok:64", [1, 2], ("hidden",), "fp32"),
              cache_key("teacher", enc, "tok:128", [1, 3], ("hidden",), "fp32"),
              cache_key("teacher", enc, "tok:128", [1, 2], ("hidden", "scores", "v"), "fp32"),
              cache_key("teacher", enc, "tok:128", [1, 2], ("hidden",), "fp16")]
    assert len({base, *others}) == 7


def test_two_concurrent_fills_build_once(tmp_path):
    model, enc = _model("bert"), _enc("bert")
    run, calls = _run(model)
    results, errors = [], []

    def fill():
        try:
            results.append(open_or_build(tmp_path, "t", enc, "tok", [1], ("hidden",), "fp32", run, 3).folder)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fill) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sum(calls) == len(enc)  # built once
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []  # no half-written folder left


@pytest.mark.parametrize("objective", ["hid-seq", "att-kl+val-kl"])
def test_the_teacher_does_not_run_when_the_cache_covers_the_step(objective, tmp_path):
    teacher, enc = _model("bert"), _enc("bert", n=32)
    student = _model("bert", layers=2)
    cfg = RunConfig(batch_size=8, epochs=1, lr=1e-3)
    ctx = Context(get_task("rte"), cfg, [(1, 1), (2, 3)], 16, 16, student_heads=2, teacher_heads=2)
    obj = get_objective(objective)(ctx)
    logits = torch.zeros(200, 2)
    cache = open_or_build(tmp_path, "t", enc, "tok", [1, 3], parts_for(obj.needs), "fp32", _run(teacher, obj.needs)[0], 3)
    source = TeacherSource([teacher], obj.needs, [logits], False, [cache], [1, 3])
    assert source.covered(0)
    train(student, obj, source, train_enc=enc, select_enc=_enc("bert", n=6, seed=2), task=get_task("rte"), cfg=cfg, seed=0,
          accelerator=make_accelerator(cfg), epochs=1, lr=1e-3)
    assert source.calls == 0
    live = TeacherSource([teacher], obj.needs, [logits], False, None, [1, 3])  # no output cache: the teacher runs
    assert not live.covered(0)
    train(_model("bert", layers=2), obj, live, train_enc=enc, select_enc=_enc("bert", n=6, seed=2), task=get_task("rte"), cfg=cfg,
          seed=0, accelerator=make_accelerator(cfg), epochs=1, lr=1e-3)
    assert live.calls == 4  # one per step


def test_every_seed_and_objective_reuses_one_cache(tiny_run_args, tmp_path, monkeypatch):
    """Seeds after the first read the logits and outputs computed for the first: one file of each in the teacher's
    folder (a fingerprint of the folder's files would change with every cache written into it)."""
    from distilbench.cli import main
    from distilbench.models.loading import cache_dir

    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "cache"))  # this test's own cache: count its files only
    assert main(["run", *tiny_run_args, "--objective", "hid-seq", "--seeds", "2"]) == 0  # hid-seq and the none baseline
    assert main(["run", *tiny_run_args, "--objective", "kd", "--seeds", "2", "--no-baseline"]) == 0
    folders = [p for p in (cache_dir() / "teachers").iterdir() if p.is_dir() and (p / "meta.json").exists()]
    assert len(folders) == 1
    assert len(list(folders[0].glob("logits-*.pt"))) == 1
    assert len(list(folders[0].glob("outputs-*"))) == 1


def test_the_cache_builds_from_a_teacher_whose_weights_still_require_grad(tmp_path):
    model, enc = _model("mpnet"), _enc("mpnet", n=7)
    assert all(p.requires_grad for p in model.parameters())
    cache = open_or_build(tmp_path, "t", enc, "tok", [2], parts_for(NEEDS), "fp32", lambda b: model_outputs(model, b, NEEDS), 3)
    batch = next(iter(BatchLoader(enc, [list(range(7))], False)))
    with torch.no_grad():
        live = model_outputs(model, batch, NEEDS)
    got = cache.outputs(batch["idx"], live.logits, "cpu")
    torch.testing.assert_close(got.hidden_states[2][batch["attention_mask"].bool()], live.hidden_states[2][batch["attention_mask"].bool()])

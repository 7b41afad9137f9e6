"""Attention capture (``distilbench.models.capture``) on tiny BERT and MPNet built from configs, checked against the models'
own eager attention, against scores rebuilt by hand from the projections, and end to end through the CLI."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distilbench.models.capture import IMPLEMENTATION, capture, prepare
from distilbench.errors import UsageError

IDS = [[5, 7, 9, 11, 6, 3], [5, 8, 4, 3, None, None], [5, 6, 3, None, None, None]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _classes(kind):
    from transformers import BertConfig, BertForSequenceClassification, MPNetConfig, MPNetForSequenceClassification

    if kind == "bert":
        return BertConfig, BertForSequenceClassification, 0
    return MPNetConfig, MPNetForSequenceClassification, 1  # MPNet pads with id 1 (its position ids start after it)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny BERT and a tiny MPNet (hidden 16, 2 heads, 3 layers, vocab 50), saved so each test loads the same
    weights with the attention implementation it wants."""
    paths = {}
    for kind in ("bert", "mpnet"):
        config_cls, model_cls, _ = _classes(kind)
        config = config_cls(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                            max_position_embeddings=32)
        torch.manual_seed(0)
        paths[kind] = tmp_path_factory.mktemp(kind)
        model_cls(config).save_pretrained(paths[kind])
    return paths


def _load(saved, kind, attn):
    _, model_cls, _ = _classes(kind)
    return model_cls.from_pretrained(saved[kind], attn_implementation=attn).eval()


def _inputs(kind):
    pad = _classes(kind)[2]
    ids = torch.tensor([[pad if t is None else t for t in row] for row in IDS])
    return {"input_ids": ids, "attention_mask": (ids != pad).long()}


def _self_attention(model, kind, i):
    """Layer i's (query, key) projections, read from the model code's own module names."""
    if kind == "bert":
        att = model.bert.encoder.layer[i].attention.self
        return att.query, att.key, att.value
    att = model.mpnet.encoder.layer[i].attention.attn
    return att.q, att.k, att.v


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_capture_matches_eager_attention_and_hand_scores(saved, kind):
    eager, captured = _load(saved, kind, "eager"), _load(saved, kind, "eager")
    inputs = _inputs(kind)
    mask = inputs["attention_mask"]
    with torch.no_grad():
        ref = eager(**inputs, output_attentions=True, output_hidden_states=True)
        with capture(captured) as layers:
            out = captured(**inputs)
        assert len(layers) == 3
        assert torch.allclose(out.logits, ref.logits, atol=1e-6)  # capturing changes nothing the model computes
        bias = eager.mpnet.encoder.compute_position_bias(ref.hidden_states[0]) if kind == "mpnet" else 0.0
        for i, layer in enumerate(layers):
            # probabilities: exactly what output_attentions=True of the eager model gives
            assert layer["probs"].shape == (3, 2, 6, 6)
            assert torch.allclose(layer["probs"], ref.attentions[i], atol=1e-6)
            assert torch.all(layer["probs"][mask[:, None, None, :].expand(-1, 2, 6, -1) == 0] == 0)  # padded keys get 0
            # q, k, v: the layer's projections of its input hidden state, split into 2 heads of 8
            proj = [p(ref.hidden_states[i]).view(3, 6, 2, 8).transpose(1, 2) for p in _self_attention(eager, kind, i)]
            for name, expected in zip("qkv", proj):
                assert torch.allclose(layer[name], expected, atol=1e-6)
            # scores: Q K^T / sqrt(d_h) (+ MPNet's relative position bias), before the padding mask
            scores = proj[0] @ proj[1].transpose(-1, -2) / math.sqrt(8) + bias
            assert torch.allclose(layer["scores"], scores, atol=1e-5)
            additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            assert torch.allclose(layer["probs"], torch.softmax(scores + additive, -1), atol=1e-6)
        if kind == "mpnet":
            assert bias.abs().sum() > 0  # the bias is really part of the check


def test_mpnet_route_builds_no_attention_map_for_an_objective_that_reads_only_values(saved, monkeypatch):
    """Val-KL reads only V: the hook route must not rebuild Q K^T (the model has its own) unless scores are read."""
    model = _load(saved, "mpnet", "eager")
    inputs = _inputs("mpnet")
    with torch.no_grad():
        with capture(model) as layers:
            model(**inputs)
        maps = []
        real = torch.matmul
        monkeypatch.setattr(torch, "matmul", lambda a, b, **kw: maps.append(a.shape) or real(a, b, **kw))
        values = [layer["v"] for layer in layers]
        assert maps == [] and all("scores" not in layer and "probs" not in layer for layer in layers)
        assert all(v.shape == (3, 2, 6, 8) for v in values)
        probs = layers[0]["probs"]  # computed on first read, once
        assert len(maps) == 1 and "scores" in layers[0] and probs.shape == (3, 2, 6, 6)
        assert layers[0]["probs"] is probs and len(maps) == 1
        with pytest.raises(KeyError):
            layers[0]["nothing"]


def test_bert_prepare_switches_to_capture_and_stays_fast_outside(saved, monkeypatch):
    from transformers import AttentionInterface

    sdpa, model = _load(saved, "bert", "sdpa"), _load(saved, "bert", "sdpa")
    assert prepare(model) is model
    assert model.config._attn_implementation == IMPLEMENTATION
    inputs = _inputs("bert")
    real_sdpa = AttentionInterface._global_mapping["sdpa"]
    calls = []

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    with torch.no_grad():
        expected = sdpa(**inputs).logits
        monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", counting_sdpa)
        with capture(model) as layers:
            model(**inputs)
        assert len(layers) == 3 and calls == []  # inside: eager attention, recorded
        got = model(**inputs).logits  # outside: handed to sdpa, nothing recorded
    assert len(calls) == 3
    assert len(layers) == 3
    assert torch.allclose(got, expected, atol=1e-6)


def test_mpnet_hooks_are_removed_after_capture(saved):
    model = _load(saved, "mpnet", "eager")
    inputs = _inputs("mpnet")
    with torch.no_grad():
        with capture(model) as layers:
            model(**inputs)
        model(**inputs)
    assert len(layers) == 3
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class _FusedLayer(nn.Module):
    """A transformer-like layer with one fused qkv projection: nothing capture can hook."""

    def __init__(self, d=8):
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        return self.out(self.qkv(x)[..., :8])


class _Fused(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([_FusedLayer() for _ in range(config.num_hidden_layers)])


def test_model_without_projections_or_interface_is_refused():
    model = _Fused(SimpleNamespace(num_hidden_layers=2, num_attention_heads=2))
    with pytest.raises(UsageError, match=r"cannot capture attention of _Fused: layer 1 has no single self-attention with "
                                         r"query/key/value projections"):
        prepare(model)
    with pytest.raises(UsageError, match="does not use transformers' attention interface"):
        with capture(model):
            pass


def test_model_without_head_count_is_refused_clearly():
    with pytest.raises(UsageError, match="no num_attention_heads"):
        prepare(_Fused(SimpleNamespace(num_hidden_layers=2)))


@pytest.mark.parametrize("name", ["att-mse", "att-kl", "val-kl"])
def test_cli_run_stores_a_row(name, tiny_run_args):
    from distilbench.cli import main
    from distilbench.results.store import ResultsStore

    args = ["run", "--objective", name, "--seeds", "1", "--no-baseline", "--init", "layers:1,3", *tiny_run_args]
    assert main(args) == 0
    store = ResultsStore(tiny_run_args[tiny_run_args.index("--results") + 1])
    try:
        rows = store.rows(objective=name)
    finally:
        store.close()
    assert len(rows) == 1
    row = rows[0]
    assert row["objective_version"] == "1.0" and row["init"] == "layers:1,3" and row["seed"] == 0
    assert math.isfinite(row["score"])
    terms = row["extra"]["history"][-1]
    assert math.isfinite(terms[name]) and terms[name] >= 0

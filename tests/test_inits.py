"""Layer-initialisation strategies: the right teacher layers, copied exactly, shapes checked."""
from __future__ import annotations

import pytest
import torch

from distilbench.errors import UsageError
from distilbench.models.inits import build_student, copy_layers, layer_list, parse_init


def _teacher(kind="bert", layers=6):
    if kind == "bert":
        from transformers import BertConfig as C, BertForSequenceClassification as M
    else:
        from transformers import MPNetConfig as C, MPNetForSequenceClassification as M
    torch.manual_seed(1)
    return M(C(vocab_size=60, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32, num_labels=3))


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_layers_123_copies_exactly_those_layers(kind):
    teacher = _teacher(kind)
    student, mapping = copy_layers(teacher, (1, 2, 3), seed=0)
    _, t_layers = layer_list(teacher)
    _, s_layers = layer_list(student)
    assert len(s_layers) == 3
    for k, t in enumerate((1, 2, 3)):
        for (name, a), (_, b) in zip(s_layers[k].state_dict().items(), t_layers[t - 1].state_dict().items()):
            assert torch.equal(a, b), name
    t_state = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        if ".layer." not in name:  # embeddings, relative position bias, pooler, task head: from the teacher
            assert torch.equal(tensor, t_state[name]), name
    assert mapping == [f"student layer {k} <- teacher layer {k}" for k in (1, 2, 3)]


def test_non_contiguous_layers_and_distinct_from_other_layers():
    teacher = _teacher(layers=12)
    student, mapping = copy_layers(teacher, (1, 8, 12), seed=0)
    _, t_layers = layer_list(teacher)
    _, s_layers = layer_list(student)
    w = lambda layer: next(iter(layer.state_dict().values()))
    assert torch.equal(w(s_layers[1]), w(t_layers[7]))
    assert not torch.equal(w(s_layers[1]), w(t_layers[1]))
    assert torch.equal(w(s_layers[2]), w(t_layers[11]))
    assert mapping[1] == "student layer 2 <- teacher layer 8"


@pytest.mark.parametrize("spec,expected", [("every-k", (4, 8, 12)), ("first-k", (1, 2, 3)), ("last-k", (10, 11, 12)),
                                           ("layers:1,8,12", (1, 8, 12)), ("layers:4,8,12", (4, 8, 12))])
def test_strategies_pick_the_papers_layers(spec, expected):
    plan = parse_init(spec, teacher_layers=12, student_layers=3)
    assert plan.layers == expected
    assert plan.spec == "layers:" + ",".join(map(str, expected))


def test_every_k_with_six_layers():
    assert parse_init("every-k", 12, 6).layers == (2, 4, 6, 8, 10, 12)


@pytest.mark.parametrize("spec,needle", [("layers:1,2,13", "13"), ("layers:0,1", "0"), ("layers:a", "layers:1,2,3"),
                                         ("layers:2,2", "distinct"), ("layer:1,2", "did you mean")])
def test_bad_specs_are_usage_errors(spec, needle):
    with pytest.raises(UsageError) as err:
        parse_init(spec, teacher_layers=12, student_layers=3)
    assert needle.lower() in str(err.value).lower()


def test_out_of_range_message_names_range():
    with pytest.raises(UsageError, match=r"1\.\.12"):
        parse_init("layers:1,2,13", 12, 3)


def test_random_init_uses_config_only_and_is_seeded():
    teacher = _teacher()
    plan = parse_init("random", 6, 2)
    a, _ = build_student(plan, teacher, seed=3, load_pretrained=None)
    b, _ = build_student(plan, teacher, seed=3, load_pretrained=None)
    c, _ = build_student(plan, teacher, seed=4, load_pretrained=None)
    assert a.config.num_hidden_layers == 2
    wa, wb, wc = (m.base_model.embeddings.word_embeddings.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not torch.equal(wa, teacher.base_model.embeddings.word_embeddings.weight)


def test_shape_mismatch_is_refused():
    teacher = _teacher()
    student_like = _teacher(layers=2)
    # a teacher whose layer tensor was replaced by one of another shape must not be copied silently
    teacher.base_model.encoder.layer[0].intermediate.dense = torch.nn.Linear(16, 40)
    with pytest.raises(RuntimeError, match="shape"):
        copy_layers(teacher, (1, 2), seed=0)
    del student_like

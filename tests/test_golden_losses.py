"""Golden loss values (torchdistill's habit): every registered objective, and two combinations, on one set of fixed
tensors (a classification and a regression task, padding included), with first-token and mean-pooled models, pinned
in ``tests/data/golden.json`` (``losses``, ``losses_mean``) to float32 precision. The formula tests in the other files
say each loss is right; this one says a refactor left every number as it was. A deliberate change regenerates the
file (``--update-golden``, see ``tests/golden.py``) and explains its diff in the commit.
"""
from __future__ import annotations

import json

import pytest
import torch

import golden

from distilbench.config import RunConfig
from distilbench.objectives import OBJECTIVES, Context, Outputs, get_objective
from distilbench.data.tasks import get_task

B, L, DS, DT, H = 3, 5, 8, 12, 2
PAIRS = [(1, 2), (2, 4), (3, 6)]
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])


def outputs(d: int, layers: int, seed: int, n_out: int) -> Outputs:
    """Logits, hidden states (embeddings first) and attention internals; padded keys masked in the scores."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32)
    hidden = tuple(r(B, L, d) for _ in range(layers + 1))
    att = []
    for _ in range(layers):
        scores = r(B, H, L, L)
        scores = scores.masked_fill(MASK[:, None, None, :] == 0, torch.finfo(torch.float32).min)
        att.append({"scores": scores, "probs": scores.softmax(-1), "q": r(B, H, L, d // H), "k": r(B, H, L, d // H),
                    "v": r(B, H, L, d // H)})
    return Outputs(r(B, n_out), hidden, att)


def loss_of(name: str, task: str = "rte", stage_name: str | None = None, pooling: str = "cls") -> tuple[float, dict[str, float]]:
    """The objective's loss and unweighted terms at one of its stages (default: the last) on the fixed tensors."""
    t = get_task(task)
    n_out = 1 if t.regression else t.num_labels
    cfg = RunConfig(objective=name.split("+")[0], task=task)
    torch.manual_seed(0)
    multi = getattr(get_objective(name), "multi_teacher", False)
    ctx = Context(t, cfg, PAIRS, DS, DT, num_teachers=3 if multi else 1, student_heads=H, teacher_heads=H, seed=0,
                  team=[{"name": f"t{i}", "params": 100 * (i + 1), "select_score": 0.5 + 0.1 * i} for i in range(3)] if multi else [],
                  pooling=pooling, teacher_pooling=pooling)
    obj = get_objective(name)(ctx)
    s = outputs(DS, 3, 1, n_out)
    teachers = [outputs(DT, 6, 2 + i, n_out) for i in range(3 if multi else 1)]
    labels = torch.tensor([0, 1, 1]) if not t.regression else torch.tensor([0.2, 0.9, 0.5])
    batch = {"attention_mask": MASK, "labels": labels, "idx": torch.tensor([0, 1, 2])}
    stages = obj.stages()
    stage = next(st for st in stages if st.name == stage_name) if stage_name else stages[-1]
    obj.begin_stage(stage)
    chosen = obj.choose_teacher(0, 10)
    teacher = [teachers[i] for i in chosen] if isinstance(chosen, list) else teachers[chosen] if multi else teachers[0]
    out = obj(s, teacher, batch, stage)
    return out.loss.item(), {k: float(v) for k, v in out.terms.items()}


COMBOS = ("att-kl+hid-seq", "att-mse+hid-seq")
# multi-teacher objectives, and kd's divergence variants, distil class (or token) distributions only
ONLY_CLASSIFICATION = {"autoskd", "avgkd", "skd", "kd-reverse", "gkd-jsd"}
PINNED_STAGES = {"ted": ("filters", "distil"), "ted-kl": ("filters", "distil")}  # TED's Stage I is pinned too


def keys() -> list[tuple[str, str, str | None]]:
    """(objective, task, stage) of every pinned value: each registered objective and the combinations, on a
    classification task and (where it applies) a regression task, at its last stage (None) or the stages named above."""
    return [(n, t, s) for n in sorted(set(OBJECTIVES.names()) | set(COMBOS))
            for t in (("rte",) if n in ONLY_CLASSIFICATION else ("rte", "stsb"))
            for s in PINNED_STAGES.get(n, (None,))]


def _key(name: str, task: str, stage: str | None) -> str:
    return f"{name}|{task}|{stage or 'last'}"


def _same(got, want) -> None:
    # 6 decimals, or 4e-7 relative where a float32 value is too large to carry 6 (TED's weighted total)
    assert got[0] == pytest.approx(want[0], rel=4e-7, abs=1.5e-6)
    assert set(got[1]) == set(want[1])
    for k, v in got[1].items():
        assert v == pytest.approx(want[1][k], rel=4e-7, abs=1.5e-6), k


@pytest.mark.parametrize("name, task, stage", keys())
@pytest.mark.parametrize("pooling, section", [("cls", "losses"), ("mean", "losses_mean")])
def test_golden_loss(request, name, task, stage, pooling, section):
    got = list(loss_of(name, task, stage, pooling=pooling))
    _same(golden.plain(got), golden.expected(request.config, section, _key(name, task, stage), got))


def test_only_objectives_that_read_the_sentence_representation_depend_on_pooling(request):
    if golden.updating(request.config):
        pytest.skip("regenerating the file")
    pinned = json.loads(golden.PATH.read_text(encoding="utf-8"))
    moved = {k.split("|")[0] for k, v in pinned["losses_mean"].items() if v != pinned["losses"][k]}
    assert moved == {n for n, *_ in keys() if get_objective(n).reads_sentence}
    assert set(pinned["losses"]) == {_key(*k) for k in keys()}  # every registered objective is pinned, nothing else

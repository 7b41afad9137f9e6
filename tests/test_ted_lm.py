"""TED with language-model filters (paper 001 §4, Table 1): each filter ends in the teacher's own output head (final
norm and LM head, frozen), and Stage I trains the filters alone on the next-token NLL; its loss falls on a tiny GPT-2."""
from __future__ import annotations

import torch


def _ted(teacher, mode="train"):
    from distilbench.config import RunConfig
    from distilbench.data.tasks import get_task
    from distilbench.objectives import Context, get_objective

    cfg = RunConfig(task="wikitext2", objective="ted", layer_map="ted", ted_student_filters=mode).validate()
    d = teacher.config.hidden_size
    return get_objective("ted")(Context(get_task("wikitext2"), cfg, [(1, 1), (2, 4)], d, d, teacher_model=teacher))


def _teacher():
    from tiny import bpe_tokenizer

    from distilbench.models.scratch import random_causal_lm

    tok = bpe_tokenizer(["the cat sat on the mat\n"] * 10)
    return random_causal_lm("n_layer=4,n_embd=32,n_head=2,dropout=0", tok, seed=0, n_positions=64).eval()


def test_ted_lm_filters_stage_one_loss_decreases_and_the_lm_head_stays_frozen():
    from distilbench.objectives import Outputs

    teacher = _teacher()
    ted = _ted(teacher)
    stages = ted.stages()
    assert [s.name for s in stages] == ["filters", "distil"] and stages[0].shared
    stage = stages[0]
    ted.begin_stage(stage)
    head_before = {k: v.clone() for k, v in ted.t_heads[0].state_dict().items()}
    params = [p for p in ted.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for p in ted.t_heads[0].parameters())
    torch.manual_seed(0)
    pattern = torch.randint(1, teacher.config.vocab_size, (8,))
    ids = pattern.repeat(4, 3)  # [4, 24]: a repeated pattern the filters can learn to predict
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with torch.no_grad():
        out = teacher(input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True)
    t_out = Outputs(out.logits, out.hidden_states)
    s_out = Outputs(out.logits, out.hidden_states)  # a student equal to the teacher: only the filters learn
    opt = torch.optim.Adam(params, lr=3e-2)
    losses = []
    for _ in range(60):
        loss = ted(s_out, t_out, batch, stage).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0] and losses[-1] < min(losses[:10]), losses[::10]  # the head is random: a floor
    for k, v in ted.t_heads[0].state_dict().items():
        assert torch.equal(v, head_before[k]), k  # the LM head is the teacher's own, never trained
    assert ted.report()["filter_params_teacher"] == sum(p.numel() for f in ted.t_filters for p in f.parameters())


def test_ted_lm_stage_two_is_the_filtered_mse_on_every_real_token():
    from distilbench.objectives import Outputs

    teacher = _teacher()
    ted = _ted(teacher, mode="copy")
    distil = ted.stages()[-1]
    ted.begin_stage(distil)
    ids = torch.randint(1, teacher.config.vocab_size, (2, 10))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with torch.no_grad():
        out = teacher(input_ids=ids, output_hidden_states=True)
    result = ted(Outputs(out.logits, out.hidden_states), Outputs(out.logits, out.hidden_states), batch, distil)
    assert torch.isfinite(result.loss) and float(result.terms["kd"]) < 1e-6  # the teacher distilled into itself

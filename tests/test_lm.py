"""Causal language modelling data and perplexity: the wikitext2 task on the real offline files, packing and
evaluation windows by hand, perplexity = exp of the mean NLL recomputed by hand on a tiny GPT-2, and a corpus shorter
than one block (or a classification teacher) refused with one line and exit 2."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distilbench.data import lm
from distilbench.data.tasks import get_task, load_split
from distilbench.errors import DataError
from distilbench.training.loop.lm import evaluate_perplexity

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKI = DATA / "wikitext-2-tokens"


def test_wikitext2_is_a_causal_lm_task_scored_by_perplexity_lower_better():
    t = get_task("wikitext2")
    assert t.family == "causal-lm" and t.main_score == "perplexity" and not t.higher_is_better
    assert (t.files, t.glue_dir) == ({"train": "valid.txt", "dev": "test.txt"}, "wikitext-2-tokens")
    assert (t.hub_path, t.hub_config) == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert "trains on its validation split" in t.provenance and "scored on its test split" in t.provenance


@pytest.mark.skipif(not WIKI.is_dir(), reason=f"WikiText-2 not found at {WIKI}")
def test_wikitext2_offline_trains_on_valid_and_scores_on_test_line_for_line():
    t = get_task("wikitext2")
    train, dev = load_split(t, "train", DATA), load_split(t, "dev", DATA)
    assert (len(train), len(dev)) == (3760, 4358)  # MANIFEST.tsv line counts of valid.txt and test.txt
    assert "".join(e.text_a for e in train) == (WIKI / "valid.txt").read_text(encoding="utf-8")
    assert "".join(e.text_a for e in dev) == (WIKI / "test.txt").read_text(encoding="utf-8")
    assert [e.idx for e in dev[:3]] == [0, 1, 2] and dev[0].label is None


def test_missing_or_empty_corpus_is_one_clear_line(tmp_path):
    t = get_task("wikitext2")
    with pytest.raises(DataError, match="valid.txt does not exist"):
        load_split(t, "train", tmp_path)
    (tmp_path / "wikitext-2-tokens").mkdir()
    (tmp_path / "wikitext-2-tokens" / "valid.txt").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no text"):
        load_split(t, "train", tmp_path)


def test_openwebtext_is_read_from_the_users_files_only(tmp_path):
    """Issue 21: OpenWebText where a user has it. No hub copy has a test split, so without --data-dir the task is
    refused in one line naming the folder and files; with them its splits are the files' lines, in order."""
    t = get_task("openwebtext")
    assert t.family == "causal-lm" and t.main_score == "perplexity" and not t.higher_is_better
    assert (t.glue_dir, t.files, t.hub_path) == ("openwebtext", {"train": "train.txt", "dev": "test.txt"}, "")
    assert "user's own files" in t.provenance and "no published test" in t.provenance
    with pytest.raises(DataError, match=r"^openwebtext is read only from your own copy: pass --data-dir with a folder "
                                        r"openwebtext/ holding train.txt and test.txt") as refused:
        load_split(t, "dev", None)
    assert "\n" not in str(refused.value)
    folder = tmp_path / "openwebtext"
    folder.mkdir()
    (folder / "train.txt").write_text("a page of text .\nanother line\n", encoding="utf-8")
    (folder / "test.txt").write_text("held out .\n", encoding="utf-8")
    train, dev = load_split(t, "train", tmp_path), load_split(t, "dev", tmp_path)
    assert [e.text_a for e in train] == ["a page of text .\n", "another line\n"] and [e.text_a for e in dev] == ["held out .\n"]


def test_blocks_are_consecutive_and_full_and_a_short_corpus_is_refused():
    assert lm.pack_blocks(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the partial block [8, 9] dropped
    with pytest.raises(DataError) as err:
        lm.pack_blocks([1, 2, 3], 4, where="task wikitext2's train split")
    msg = str(err.value)
    assert "\n" not in msg and "3 tokens, fewer than one block of --max-length 4" in msg


def _scored(windows):
    """(window, position) -> token scored there, as labels say (position 0 of a window is never a target)."""
    return [[w.labels[j] for j in range(1, len(w.labels)) if w.labels[j] != lm.IGNORE] for w in windows]


def test_evaluation_windows_score_each_token_once():
    ids = list(range(100, 110))
    blocks = lm.eval_windows(ids, 4)  # non-overlapping: each block's first token has no context, so is not scored
    assert [w.input_ids for w in blocks] == [ids[0:4], ids[4:8], ids[8:10]]
    assert _scored(blocks) == [ids[1:4], ids[5:8], ids[9:10]]
    sliding = lm.eval_windows(ids, 4, stride=2)  # sliding: every token but the first, once, with >= 2 of context
    assert [w.input_ids for w in sliding] == [ids[0:4], ids[2:6], ids[4:8], ids[6:10]]
    assert _scored(sliding) == [ids[1:4], ids[4:6], ids[6:8], ids[8:10]]
    with pytest.raises(DataError, match="stride"):
        lm.eval_windows(ids, 4, stride=5)


def test_the_evaluation_is_described_in_one_wording():
    """`run`'s summary, the model card and the report all print lm_text's words (golden strings)."""
    from distilbench.data.lm_text import evaluation_text, windows_text

    assert windows_text(128, 128, 2550, 323743) == ("windows of 128 tokens every 128 (non-overlapping); 2,550 windows, "
                                                    "323,743 tokens scored")
    assert windows_text(1024, 512) == ("windows of 1024 tokens every 512 (sliding: every scored token has at least "
                                       "512 tokens of context)")  # no count where the row stored none
    assert windows_text(None, 512) == "windows not recorded"
    assert evaluation_text({"eval_max_length": 32, "eval_stride": 8, "windows": 3, "tokens": 70}) == (
        "perplexity = exp(mean next-token NLL) over the whole test text, windows of 32 tokens every 8 (sliding: every "
        "scored token has at least 24 tokens of context); 3 windows, 70 tokens scored")


def _tiny_lm(vocab=40):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=16, n_embd=16, n_layer=2, n_head=2)).eval()


def _hand_nll(model, ids, max_length, stride):
    """Each window run alone (no padding); -log p(token | its prefix in the window), summed in plain Python over the
    tokens the window scores."""
    total, count = 0.0, 0
    for w in lm.eval_windows(ids, max_length, stride):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([w.input_ids])).logits[0].log_softmax(-1).tolist()
        for j in range(1, len(w.input_ids)):
            if w.labels[j] != lm.IGNORE:
                total -= logp[j - 1][w.input_ids[j]]
                count += 1
    return total, count


@pytest.mark.parametrize("stride", [None, 3, 8])
def test_perplexity_is_exp_of_the_hand_computed_mean_nll(stride):
    model = _tiny_lm()
    ids = torch.randint(0, 40, (23,), generator=torch.Generator().manual_seed(1)).tolist()
    score = evaluate_perplexity(model, ids, max_length=8, stride=stride, batch_size=3)  # batches pad the last window
    total, count = _hand_nll(model, ids, 8, stride)
    assert score.tokens == count == (22 if stride == 3 else 23 - 3)
    assert score.nll == pytest.approx(total / count, rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert score.stride == (stride or 8) and score.as_metrics()["score"] == score.perplexity


def test_one_block_nll_is_transformers_own_causal_lm_loss():
    model = _tiny_lm()
    ids = torch.randint(0, 40, (1, 8), generator=torch.Generator().manual_seed(2))
    score = evaluate_perplexity(model, ids[0].tolist(), max_length=8)
    assert score.nll == pytest.approx(model(input_ids=ids, labels=ids).loss.item(), rel=1e-5)


def test_token_ids_of_a_corpus_are_its_lines_tokenised_in_order():
    from tiny import bpe_tokenizer

    lines = ["the cat sat on the mat\n", " = heading = \n", "\n", "a dog <unk> ran\n"]
    tok = bpe_tokenizer(lines * 5)
    examples = load_lines(lines)
    ids = lm.corpus_ids(tok, examples)
    assert ids == [i for line in lines for i in tok(line, add_special_tokens=False)["input_ids"]]
    assert tok.decode(ids) == "".join(lines)
    again = bpe_tokenizer(lines * 5)  # the BPE training is deterministic
    assert again.get_vocab() == tok.get_vocab() and lm.corpus_ids(again, examples) == ids


def load_lines(lines):
    from distilbench.data.tasks import Example

    return [Example(i, line, None, None) for i, line in enumerate(lines)]


# ------------------------------------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def gpt2_teacher(tmp_path_factory):
    from tiny import tiny_gpt2

    lines = [f"line {i} of a tiny corpus about cats and dogs\n" for i in range(50)]
    return tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2", lines)


def _corpus(root: Path, words: int) -> Path:
    (root / "wikitext-2-tokens").mkdir(parents=True)
    text = " ".join(["cats"] * words) + "\n"
    for name in ("valid.txt", "test.txt"):
        (root / "wikitext-2-tokens" / name).write_text(text, encoding="utf-8")
    return root


def _run(args, capfd):
    from distilbench.cli import main

    code = main(["run", "--task", "wikitext2", "--no-progress", *args])
    return code, capfd.readouterr().err.strip()


def test_a_corpus_shorter_than_one_block_is_one_line_and_exit_2(gpt2_teacher, tmp_path, capfd):
    data = _corpus(tmp_path / "data", 20)
    code, err = _run(["--teacher", str(gpt2_teacher), "--data-dir", str(data), "--max-length", "64",
                      "--results", str(tmp_path / "r.sqlite")], capfd)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "fewer than one block of --max-length 64" in err and "train split" in err
    assert not (tmp_path / "r.sqlite").exists()


def test_a_classification_teacher_for_an_lm_task_is_one_line_and_exit_2(tiny_teacher, tmp_path, capfd):
    data = _corpus(tmp_path / "data", 200)
    code, err = _run(["--teacher", str(tiny_teacher), "--data-dir", str(data), "--results", str(tmp_path / "r.sqlite")], capfd)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "BertForSequenceClassification" in err and "causal LM" in err


def test_gpt2_attention_is_captured_through_the_attention_interface():
    """A GPT-2 student or teacher is captured like BERT: per layer, pre-mask scores and probabilities equal to eager
    attention's (causal and padding masks applied: no weight on a future or padded key); the logits do not change."""
    from distilbench.models.capture import capture

    model = _tiny_lm()
    eager = _tiny_lm()
    eager.set_attn_implementation("eager")
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    want = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    with capture(model) as layers:
        got = model(input_ids=ids, attention_mask=mask)
    assert len(layers) == 2 and layers[0]["scores"].shape == (2, 2, 6, 6)
    real = mask.bool()
    for layer, probs in zip(layers, want.attentions):
        torch.testing.assert_close(layer["probs"][real[:, None, :, None].expand_as(probs)],
                                   probs[real[:, None, :, None].expand_as(probs)], rtol=1e-5, atol=1e-6)
        future = torch.ones(6, 6, dtype=torch.bool).triu(1)
        assert (layer["probs"][..., future] == 0).all()
        assert (layer["probs"][1, :, :4, 4:] == 0).all()  # padded keys of the second sequence
    torch.testing.assert_close(got.logits[real], want.logits[real], rtol=1e-5, atol=1e-5)


def test_attention_objectives_on_a_causal_lm_compare_only_the_keys_it_attends_to():
    """att-kl on a causal-lm task = KL of the captured probabilities (causal and padding masks applied) over the real
    queries; att-mse = the squared score error over the real pairs with j <= i. On a classification task (every real
    key) the same tensors give other values."""
    from distilbench.config import RunConfig
    from distilbench.models.capture import capture
    from distilbench.objectives import Context, Outputs, get_objective

    teacher, student = _tiny_lm(), _tiny_lm()
    torch.manual_seed(5)
    student.transformer.h[0].attn.c_attn.weight.data.normal_(0, 0.3)
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    outs = []
    for m in (student, teacher):
        with capture(m) as layers:
            logits = m(input_ids=ids, attention_mask=mask).logits
        outs.append(Outputs(logits, None, layers))
    batch = {"attention_mask": mask}
    real = mask.bool()
    p_s, p_t = outs[0].attentions[0]["probs"].detach(), outs[1].attentions[0]["probs"]
    terms = torch.where(p_t > 0, p_t * (p_t.log() - p_s.log()), 0.0).sum(-1)  # [B, H, L]: row KL
    want_kl = terms.permute(0, 2, 1)[real].mean()
    pairs = real[:, :, None] & real[:, None, :] & torch.ones(6, 6, dtype=torch.bool).tril()
    diff = (outs[0].attentions[0]["scores"] - outs[1].attentions[0]["scores"]).permute(0, 2, 3, 1)[pairs]
    want_mse = diff.pow(2).mean()

    def pair(name, task):
        ctx = Context(get_task(task), RunConfig(task=task), [(1, 1), (2, 2)], 16, 16, student_heads=2, teacher_heads=2)
        return get_objective(name)(ctx).pair_loss(outs[0], outs[1], 1, 1, 0, batch).item()

    assert pair("att-kl", "wikitext2") == pytest.approx(want_kl.item(), rel=1e-4)
    assert pair("att-mse", "wikitext2") == pytest.approx(want_mse.item(), rel=1e-5)
    assert pair("att-kl", "rte") != pytest.approx(want_kl.item(), rel=1e-2)
    assert pair("att-mse", "rte") != pytest.approx(want_mse.item(), rel=1e-2)


def test_hidden_state_objectives_on_a_causal_lm_read_its_real_tokens_unchanged():
    """Issue 21: the hidden-state objectives run unchanged on a causal LM. hid-seq = the squared error of the layer's
    hidden states averaged over the hidden size and over the real tokens (padding ignored: changing a padded position
    changes nothing); hid-cls = the MSE of the first position's states, as on a classifier."""
    from distilbench.config import RunConfig
    from distilbench.objectives import Context, Outputs, get_objective

    teacher, student = _tiny_lm(), _tiny_lm()
    torch.manual_seed(6)
    student.transformer.h[0].mlp.c_fc.weight.data.normal_(0, 0.3)
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        s_out, t_out = (m(input_ids=ids, attention_mask=mask, output_hidden_states=True) for m in (student, teacher))
    ctx = Context(get_task("wikitext2"), RunConfig(task="wikitext2"), [(1, 1), (2, 2)], 16, 16, student_heads=2,
                  teacher_heads=2)
    batch = {"attention_mask": mask}

    def loss(name, s_states):
        return get_objective(name)(ctx).pair_loss(Outputs(s_out.logits, s_states, None),
                                                   Outputs(t_out.logits, t_out.hidden_states, None), 1, 1, 0, batch).item()

    h_s, h_t = s_out.hidden_states[1], t_out.hidden_states[1]
    want_seq = (h_s - h_t).pow(2).mean(-1)[mask.bool()].mean().item()
    assert want_seq > 1e-4 and loss("hid-seq", s_out.hidden_states) == pytest.approx(want_seq, rel=1e-5)
    assert loss("hid-cls", s_out.hidden_states) == pytest.approx((h_s[:, 0] - h_t[:, 0]).pow(2).mean().item(), rel=1e-5)
    padded = list(s_out.hidden_states)
    padded[1] = h_s.clone()
    padded[1][1, 4:] += 100.0  # the second sequence's two padded positions
    assert loss("hid-seq", tuple(padded)) == pytest.approx(want_seq, rel=1e-5)


def test_a_gpt2_student_copies_the_teachers_layers_embeddings_and_tied_lm_head():
    from distilbench.models.inits import copy_layers, layer_list

    teacher = _tiny_lm()
    for layer in teacher.transformer.h:  # make the two layers distinguishable
        layer.ln_1.weight.data.uniform_(0.5, 1.5)
    student, mapping = copy_layers(teacher, (2,), seed=0)
    assert layer_list(teacher)[0] == "transformer.h" and student.config.n_layer == 1
    assert mapping == ["student layer 1 <- teacher layer 2"]
    s, t = student.state_dict(), teacher.state_dict()
    assert all(torch.equal(s[k], t[k.replace("transformer.h.0.", "transformer.h.1.")]) for k in s)
    assert student.lm_head.weight.data_ptr() == student.transformer.wte.weight.data_ptr()  # still tied

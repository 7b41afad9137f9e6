"""Causal-LM runs end to end (issue #21): a from-scratch teacher trained and cached by `distilbench teacher --init
random`, students distilled from it by `distilbench run`, their dev perplexity (lower is better) stored with the
evaluation stride, a rerun that trains nothing, the run table ranked by the lowest perplexity with the signal check
against `none`; bad input refused in one line with exit 2."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

WORDS = "the cat sat on a mat while dogs ran in the park and birds sang over green hills near old towns".split()


def _corpus(root: Path) -> Path:
    rng = random.Random(0)
    folder = root / "wikitext-2-tokens"
    folder.mkdir(parents=True)
    for name, n in (("valid.txt", 240), ("test.txt", 60)):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + " .\n" for _ in range(n)]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return root


COMMON = ["--task", "wikitext2", "--bpe-vocab", "300", "--max-length", "32", "--teacher-epochs", "1",
          "--teacher-lr", "3e-3", "--batch-size", "8", "--no-progress"]


def _cli(args, capfd):
    from distilbench.cli import main

    code = main(args)
    out = capfd.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """The teacher command, then a kd run with 2 seeds (and its none baseline) on a tiny corpus: (folder, outputs)."""
    from distilbench.cli import main

    root = tmp_path_factory.mktemp("lmrun")
    data = _corpus(root / "data")
    store = root / "r.sqlite"
    base = [*COMMON, "--data-dir", str(data), "--results", str(store)]
    teacher_code = main(["teacher", "--init", "random", "--teacher-config", "gpt2-tiny", *base])
    run_args = ["run", *base, "--objective", "kd", "--teacher", "scratch:gpt2-tiny", "--seeds", "2",
                "--student-layers", "1", "--epochs", "1", "--lr", "3e-3", "--workers", "1"]
    run_code = main(run_args)
    return root, store, teacher_code, run_code, run_args


def _rows(store: Path) -> list[dict]:
    from distilbench.results.store import ResultsStore

    opened = ResultsStore(str(store))
    try:
        return [r for r in opened.rows() if r.get("kind", "student") == "student"]
    finally:
        opened.close()


def test_a_tiny_lm_run_stores_its_rows_with_perplexity_and_stride(lm_run):
    root, store, teacher_code, run_code, _ = lm_run
    assert teacher_code == 0 and run_code == 0
    rows = _rows(store)
    assert sorted((r["objective"], r["seed"]) for r in rows) == [("kd", 0), ("kd", 1), ("none", 0), ("none", 1)]
    for r in rows:
        assert r["score"] == r["metrics"]["perplexity"] > 1.0
        assert r["metrics"]["eval_stride"] == 32 and r["metrics"]["eval_max_length"] == 32
        lm = r["extra"]["lm"]
        assert lm["from_scratch_teacher"] and "from-scratch teacher" in lm["teacher_note"]
        assert lm["higher_is_better"] is False and lm["eval_stride"] == 32
        assert r["extra"]["majority"] is None and r["teacher_score"] > 1.0
        # per-example values: each window's mean NLL, with the tokens it scores
        assert len(r["extra"]["dev_predictions"]) == len(r["extra"]["dev_labels"]) == lm["windows"]
        assert sum(r["extra"]["dev_labels"]) == lm["tokens"]
        assert r["extra"]["layer_mapping"] == ["student layer 1 <- teacher layer 1"]


def test_a_rerun_trains_nothing_and_prints_the_lower_is_better_table(lm_run, capfd, monkeypatch):
    from distilbench.training.runs import runner

    _, store, _, _, run_args = lm_run
    monkeypatch.setattr(runner, "train", lambda *a, **k: pytest.fail("a stored run was trained again"))
    code, out, err = _cli(run_args, capfd)
    assert code == 0, err
    assert "4 run(s) already stored" in err
    assert "dev perplexity (lower is better)" in out and "signal check kd: none - kd" in out
    assert "from-scratch teacher" in out and "windows of 32 tokens every 32" in out


def test_the_from_scratch_teacher_is_cached_under_a_key_holding_its_shape_and_tokenizer(lm_run):
    import json

    from distilbench.models.loading import cache_dir

    folders = [f for f in (cache_dir() / "teachers").glob("wikitext2-scratch_gpt2-tiny-*") if f.is_dir()]
    assert len(folders) == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["identity"]["scratch"]["shape"] == {"n_layer": 2, "n_embd": 64, "n_head": 2}
    assert meta["identity"]["scratch"]["bpe_vocab"] == 300 and meta["from_scratch"]["vocab"] <= 300


def test_the_signal_check_against_none_is_one_sided_and_paired_by_window():
    from distilbench.results.lm_signal import check_against_none

    def row(seed, score, nll):
        return {"seed": seed, "score": score, "extra": {"dev_predictions": nll, "dev_labels": [10] * len(nll)}}

    none = [row(s, 100.0 + s, [4.6 + 0.01 * k for k in range(20)]) for s in range(3)]
    better = [row(s, 80.0 + s * 1.1, [4.3 + 0.01 * k for k in range(20)]) for s in range(3)]
    worse = [row(s, 120.0 + s, [4.8 + 0.01 * k for k in range(20)]) for s in range(3)]
    assert check_against_none(better, none).below is True
    assert check_against_none(worse, none).below is False
    assert check_against_none(better[:1], none).below is None  # one seed: not checked


def test_teacher_and_student_tokenizers_that_differ_are_one_line_and_exit_2(tmp_path, capfd):
    from tiny import tiny_gpt2

    data = _corpus(tmp_path / "data")
    teacher = tiny_gpt2(tmp_path / "t", ["cats and dogs\n"] * 20)
    student = tiny_gpt2(tmp_path / "s", ["zebra quokka yak\n"] * 20, layers=1)
    capfd.readouterr()  # what saving the models printed
    code, _, err = _cli(["run", *COMMON, "--data-dir", str(data), "--results", str(tmp_path / "r.sqlite"),
                         "--teacher", str(teacher), "--student", str(student), "--objective", "kd"], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "different tokenizers" in err
    assert not (tmp_path / "r.sqlite").exists()


def test_a_from_scratch_teacher_for_a_classification_task_is_one_line_and_exit_2(tmp_path, capfd, glue_dir):
    code, _, err = _cli(["run", "--task", "rte", "--teacher", "scratch:gpt2-tiny", "--data-dir", str(glue_dir),
                         "--results", str(tmp_path / "r.sqlite")], capfd)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "from-scratch causal LM" in err, err


def test_the_top_k_cache_serves_the_kl_within_its_bound_and_exactly_at_k_equal_v(tmp_path):
    from accelerate import Accelerator
    from tiny import bpe_tokenizer

    from distilbench.data.lm import LMBlocks
    from distilbench.models.scratch import random_causal_lm
    from distilbench.objectives.distributions import forward_kl, topk_kl_error_bound
    from distilbench.training.teachers.lm_topk import TopKSource, topk_table
    from distilbench.training.teachers.teacher import TeacherRecord

    tok = bpe_tokenizer(["the cat sat on the mat\n"] * 10)
    teacher = random_causal_lm("n_layer=1,n_embd=16,n_head=2,dropout=0", tok, seed=0, n_positions=32).eval()
    student = random_causal_lm("n_layer=1,n_embd=16,n_head=2,dropout=0", tok, seed=1, n_positions=32).eval()
    g = torch.Generator().manual_seed(0)
    blocks = LMBlocks(torch.randint(1, len(tok), (6, 12), generator=g).tolist(), 0, list(range(6)))
    record = TeacherRecord("t", "key", tmp_path, {})
    batch = {"input_ids": torch.tensor(blocks.input_ids[:3]), "idx": torch.tensor([0, 1, 2])}
    with torch.no_grad():
        exact_t = teacher(input_ids=batch["input_ids"]).logits
        s = student(input_ids=batch["input_ids"]).logits
    exact = forward_kl(student=s, teacher=exact_t, temperature=2.0)
    for k in (4, len(tok)):
        table = topk_table(record, blocks, teacher, k, 2.0, 4, Accelerator(cpu=True), lambda _: None)
        approx_t = TopKSource(teacher, None, table)(batch).logits
        approx = forward_kl(student=s, teacher=approx_t, temperature=2.0)
        bound = topk_kl_error_bound(student=s, teacher=approx_t, temperature=2.0)
        assert float(exact - approx) <= float(bound.mean()) + 1e-5 and float(approx) <= float(exact) + 1e-5
        if k == len(tok):
            assert torch.allclose(approx, exact, atol=1e-5)
    assert len(list(tmp_path.glob("topk-*.pt"))) == 2  # one file per (blocks, k, T)



def test_the_report_keeps_perplexity_in_its_units_and_bolds_the_lowest_ranked_cell(lm_run, tmp_path):
    from distilbench.cli import main
    from distilbench.report.build import with_checks
    from distilbench.report.format import fnum
    from distilbench.results.stats import cells_from_rows

    _, store, *_ = lm_run
    rows = _rows(store)
    cells = with_checks(cells_from_rows(rows), rows)
    for c in cells:  # natural units, not x100
        assert c.stats["mean"] == pytest.approx(sum(r["score"] for r in rows if r["objective"] == c.objective) / 2)
        assert c.higher_is_better is False
    none = next(c for c in cells if c.objective == "none")
    kd = next(c for c in cells if c.objective == "kd")
    assert none.chance.applies is False and kd.chance.applies is True  # kd is checked against none
    ranked = [c for c in cells if not c.unranked]
    best = min(ranked, key=lambda c: c.stats["mean"])
    assert main(["report", "--results", str(store), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "README.md").read_text()
    assert f"**{fnum(best.stats['mean'], 1)} ± {fnum(best.stats['std'], 2)}**" in text
    assert "- **Teacher `scratch:gpt2-tiny`:** from-scratch teacher" in text and "lower is better" in text
    # the stride the rows were scored with, read from them (issue 21: in every report), with what was scored
    windows, tokens = rows[0]["extra"]["lm"]["windows"], rows[0]["extra"]["lm"]["tokens"]
    assert (f"- **Evaluation `wikitext2`:** perplexity = exp(mean next-token NLL) over the whole test text, windows "
            f"of 32 tokens every 32 (non-overlapping); {windows:,} windows, {tokens:,} tokens scored") in text
    if kd.unranked:
        assert "(not below none)" in text


def test_a_saved_lm_student_loads_as_a_causal_lm_and_recomputes_the_stored_perplexity(tmp_path, monkeypatch):
    """--save-students on a causal-LM run: an AutoModelForCausalLM folder with the from-scratch teacher's BPE
    tokenizer (padded, model_max_length = the block length) whose dev perplexity, by the harness's own code, is the
    row's score; the card shows perplexity in its own units and says the signal check needs the `none` cell."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilbench.cli import main
    from distilbench.config import RunConfig
    from distilbench.data.lm import corpus_ids
    from distilbench.data.tasks import get_task, load_split
    from distilbench.models.loading import cache_dir
    from distilbench.training.loop.lm import evaluate_perplexity

    data = _corpus(tmp_path / "data")
    store, root = tmp_path / "r.sqlite", tmp_path / "students"
    assert main(["run", *COMMON, "--data-dir", str(data), "--results", str(store), "--objective", "kd", "--no-baseline",
                 "--teacher", "scratch:gpt2-tiny", "--seeds", "1", "--student-layers", "1", "--epochs", "1",
                 "--lr", "3e-3", "--workers", "1", "--save-students", str(root)]) == 0
    (row,) = _rows(store)
    folder = Path(row["extra"]["saved_student"])
    assert folder == (root / "wikitext2" / "kd" / "layers_1" / f"seed0-{row['run_key']}").resolve()
    assert json.loads((folder / "config.json").read_text())["n_layer"] == 1  # the student, not the 2-layer teacher
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 32

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    (teacher,) = [f for f in (cache_dir() / "teachers").glob("wikitext2-scratch_gpt2-tiny-*") if f.is_dir()]
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(teacher).get_vocab() and len(tokenizer) <= 300
    assert tokenizer.pad_token is not None and tokenizer.pad_token == tokenizer.eos_token
    dev = load_split(get_task("wikitext2"), "dev", data)
    score = evaluate_perplexity(model, corpus_ids(tokenizer, dev), 32, 32, RunConfig().eval_batch_size,
                                tokenizer.pad_token_id or 0)
    assert score.perplexity == pytest.approx(row["score"], rel=1e-5)
    assert score.tokens == row["extra"]["lm"]["tokens"] and score.windows == row["extra"]["lm"]["windows"]

    card = (folder / "README.md").read_text()
    meta = json.loads((folder / "distilbench.json").read_text())
    assert meta["family"] == "causal-lm" and meta["pipeline_tag"] == "text-generation" and meta["dev"]["scale"] == 1
    assert meta["signal_check"]["verdict"] == "not applicable" and meta["signal_check"]["p"] is None
    for text in ("pipeline_tag: text-generation", "from transformers import AutoModelForCausalLM",
                 "AutoModelForCausalLM.from_pretrained", "lower is better", "byte-level BPE",
                 f"| perplexity (main) | {row['score']:.2f} | {row['teacher_score']:.2f} |",
                 "Perplexity = exp(mean next-token NLL) over the whole test text, windows of 32 tokens every 32 "
                 f"(non-overlapping); {row['extra']['lm']['windows']:,} windows, {row['extra']['lm']['tokens']:,} "
                 "tokens scored", "Signal check: not applicable to a single run",
                 "`none` student", "`wikitext-2-tokens/`", "from-scratch teacher"):
        assert text in card, text
    assert f"{100 * row['score']:.2f}" not in card  # never × 100
    assert "(majority class" not in card and "majority-class predictor" not in card
    assert "AutoModelForSequenceClassification" not in card
    # `distilbench export` rewrites the same card from the stored row alone
    assert main(["export", "--results", str(store), "--run-key", row["run_key"], "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "README.md").read_text() == card

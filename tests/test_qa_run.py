"""`distilbench run` on extractive QA (SQuAD format): a tiny teacher fine-tuned with a QA head, KD on start/end
through the runner, rows with EM/F1 and per-question values, the rerun skipped, bad heads refused in one line."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

import distilbench.training.families.qa_runner as qa_runner_mod
import distilbench.training.runs.runner as runner_mod
from conftest import TrainingStarted, no_training
from distilbench.cli import main
from distilbench.results.chance import check_rows
from distilbench.results.per_example import per_example_test, task_metrics
from distilbench.results.store import ResultsStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CITIES = ["paris", "london", "berlin", "madrid", "rome", "vienna", "prague", "dublin", "oslo", "lisbon", "athens",
          "warsaw", "moscow", "cairo", "tokyo", "delhi"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "purple"]


def _paragraph(rng: random.Random, a: int, p: int) -> dict:
    city, fruit, colour, year = rng.choice(CITIES), rng.choice(FRUITS), rng.choice(COLOURS), str(rng.randint(1500, 2000))
    filler = " ".join(rng.choice(FRUITS + COLOURS) for _ in range(rng.randint(5, 40)))
    facts = [(f"The king lived in {city}.", "Where did the king live?", city),
             (f"His favourite fruit was the {fruit}.", "What was his favourite fruit?", fruit),
             (f"The house was painted {colour} in {year}.", "When was the house painted?", year)]
    rng.shuffle(facts)
    context = f"This is a story about things. {filler}. " + " ".join(f for f, _, _ in facts)
    qas = []
    for q, (sentence, question, answer) in enumerate(facts):
        start = context.index(sentence) + sentence.index(answer)
        qas.append({"id": f"a{a}p{p}q{q}", "question": question, "answers": [{"text": answer, "answer_start": start}]})
    return {"context": context, "qas": qas}


def write_squad(path: Path, articles: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    data = [{"title": f"article {a}", "paragraphs": [_paragraph(rng, a, p) for p in range(2)]} for a in range(articles)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def tiny_encoder(path: Path, architecture: str = "BertModel") -> Path:
    """A tiny BERT saved as ``architecture`` (an encoder checkpoint, or one with another task's head)."""
    import torch
    import transformers
    from transformers import BertConfig

    from distilbench.models.loading import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    getattr(transformers, architecture)(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qa_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    write_squad(root / "data" / "squad-v1.1" / "dev-v1.1.json")
    return {"teacher": tiny_encoder(root / "tiny-encoder"), "data": root / "data", "root": root}


def _args(setup, results: Path, *extra: str) -> list[str]:
    return ["run", "--task", "squad-devsplit", "--teacher", str(setup["teacher"]), "--data-dir", str(setup["data"]),
            "--max-length", "64", "--epochs", "1", "--teacher-epochs", "2", "--batch-size", "8", "--teacher-lr", "1e-3",
            "--lr", "1e-3", "--results", str(results), "--no-progress", *extra]


def _rows(path: Path) -> list[dict]:
    store = ResultsStore(path)
    try:
        return sorted(store.rows(), key=lambda r: (r["objective"], r["seed"]))
    finally:
        store.close()


def test_tiny_qa_kd_run_stores_rows_with_em_f1_and_per_question_values(qa_setup, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results.sqlite"
    reached = []
    real = runner_mod.train

    def watch(student, objective, teacher, **kw):  # KD on start/end reaches the student through the runner
        if objective.name == "kd":
            batch = next(iter(__import__("distilbench.data.batching", fromlist=["BatchLoader"]).BatchLoader(
                kw["train_enc"], [[0, 1]], False)))
            t_out = teacher(batch)
            assert t_out.logits.shape == (2, batch["input_ids"].shape[1], 2)
            reached.append(teacher.calls)
        return real(student, objective, teacher, **kw)

    monkeypatch.setattr(runner_mod, "train", watch)
    assert main(_args(qa_setup, results, "--objective", "kd")) == 0
    assert reached == [0], "kd read the teacher's span scores from the cache, never the live teacher"
    assert "question-blind floor" in capsys.readouterr().out  # the summary's floor row: no majority class in QA
    rows = _rows(results)
    assert [(r["objective"], r["seed"]) for r in rows] == [("kd", 0), ("none", 0)]
    for r in rows:
        assert r["task"] == "squad-devsplit" and r["extra"]["main_score"] == "f1"
        assert {"exact", "f1", "score"} <= set(r["metrics"]) and r["score"] == r["metrics"]["f1"]
        assert 0.0 <= r["metrics"]["exact"] <= r["metrics"]["f1"] <= 1.0
        preds, qids = r["extra"]["dev_predictions"], r["extra"]["dev_labels"]
        assert r["extra"]["per_example"] == "f1" and len(preds) == len(qids) == 72  # 12 articles x 2 x 3
        assert np.mean(preds) == pytest.approx(r["score"], abs=1e-5)
        floor = r["extra"]["floor"]
        assert floor["name"] in ("empty answer", "first sentence") and len(floor["scores"]) == 72
        assert 0.0 <= r["teacher_score"] <= 1.0
    kd, none = rows
    assert kd["extra"]["history"][-1]["kd"] > 0 and "kd" not in none["extra"]["history"][-1]
    # the per-example statistics read them: the signal check against the question-blind floor, the paired bootstrap
    chance = check_rows([kd], samples=200)
    assert chance.applies and chance.floor.startswith("question-blind floor") and chance.majority == pytest.approx(100 * kd["extra"]["floor"]["score"])
    assert 0 < chance.example_p <= 1 and chance.mean == pytest.approx(100 * kd["score"])
    names, main_score = task_metrics("squad-devsplit", kd)
    paired = per_example_test({0: kd["extra"]["dev_predictions"]}, {0: none["extra"]["dev_predictions"]},
                              kd["extra"]["dev_labels"], names, main_score, samples=200)
    assert paired.diff == pytest.approx(100 * (kd["score"] - none["score"]), abs=1e-6) and paired.mcnemar == ()
    # the rerun trains nothing
    monkeypatch.setattr(runner_mod, "train", no_training)
    capsys.readouterr()
    assert main(_args(qa_setup, results, "--objective", "kd")) == 0
    assert "already stored" in capsys.readouterr().err
    assert len(_rows(results)) == 2


def test_qa_task_with_a_classification_teacher_exits_2_in_one_line(qa_setup, tmp_path, capfd, monkeypatch):
    teacher = tiny_encoder(tmp_path / "classifier", "BertForSequenceClassification")
    monkeypatch.setattr(runner_mod, "train", no_training)
    results = tmp_path / "results.sqlite"
    argv = _args(qa_setup, results, "--objective", "kd")
    argv[argv.index("--teacher") + 1] = str(teacher)
    capfd.readouterr()
    try:
        rc = main(argv)
    except TrainingStarted:
        pytest.fail("a classification head on a QA task was accepted")
    err = capfd.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and "BertForSequenceClassification" in err[0] and "extractive QA" in err[0], err


def test_tiny_ted_and_lwd_runs_on_qa_windows_store_rows(qa_setup, tmp_path, monkeypatch):
    """TED's Stage I filters train span heads (a Linear(d, 2) on every token); LWD and TED Stage II read the
    teacher's hidden states of the windows from the teacher-output cache, keyed by window number."""
    results = tmp_path / "results.sqlite"
    seen = {}
    real = runner_mod.train

    def watch(student, objective, teacher, **kw):
        out = real(student, objective, teacher, **kw)
        seen.setdefault(objective.name, []).append(teacher.calls)
        if objective.name == "ted":
            assert all(h.out_features == 2 for h in objective.t_heads)
        return out

    monkeypatch.setattr(runner_mod, "train", watch)
    assert main(_args(qa_setup, results, "--objective", "ted", "--no-baseline")) == 0
    assert main(_args(qa_setup, results, "--objective", "lwd", "--no-baseline")) == 0
    rows = _rows(results)
    assert [r["objective"] for r in rows] == ["lwd", "ted"]
    assert all(calls == 0 for v in seen.values() for calls in v), seen  # the cache covered every step
    ted = rows[1]
    stages = [h["stage"] for h in ted["extra"]["history"]]
    assert stages[0] == "filters" and stages[-1] == "distil"
    filters = ted["extra"]["history"][0]
    assert filters.get("filters_t", 0) > 0 or "cached" in filters
    for r in rows:
        assert 0.0 <= r["score"] <= 1.0 and len(r["extra"]["dev_predictions"]) == 72
        assert r["extra"]["history"][-1]["kd"] > 0


def test_floor_is_the_better_question_blind_answer():
    from distilbench.data.qa_tasks import Answer, QAExample
    from distilbench.data.tasks import get_task
    from distilbench.training.families.qa_run import first_sentence, floor

    ctx = "Paris is big. The king lived in Rome."
    examples = [QAExample(0, "q0", "t", ctx, "Which city is big?", (Answer("Paris", 0),)),
                QAExample(1, "q1", "t", ctx, "Where did the king live?", (Answer("Rome", ctx.index("Rome")),))]
    assert first_sentence(ctx) == "Paris is big."
    v1 = floor(get_task("squad"), examples)  # v1.1: the empty answer scores 0, the first sentence 2/(1+3)=0.5 on q0
    assert v1["name"] == "first sentence" and v1["scores"] == [0.5, 0.0] and v1["score"] == 0.25
    unanswerable = [QAExample(0, "q0", "t", ctx, "Who?", ()), examples[1]]
    v2 = floor(get_task("squad_v2"), unanswerable)  # v2.0: "" is right on the unanswerable question
    assert v2["name"] == "empty answer" and v2["scores"] == [1.0, 0.0]


def test_a_saved_qa_student_loads_as_a_qa_model_and_rescores_to_the_stored_per_question_f1(qa_setup, tmp_path, monkeypatch):
    """--save-students on extractive QA: an AutoModelForQuestionAnswering folder whose tokenizer cuts at the run's
    window length; its dev windows scored by the harness give the row's per-question F1, one by one, from the very
    weights that made them; the card says question-answering and names the question-blind floor."""
    import torch
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from distilbench.config import RunConfig
    from distilbench.data.qa import encode_qa
    from distilbench.data.qa_answers import score_answers
    from distilbench.data.tasks import get_task, load_split
    from distilbench.training.loop.qa_eval import predict_answers
    from distilbench.data.qa import window_settings
    from distilbench.training.families.qa_run import dev_results

    results, root = tmp_path / "results.sqlite", tmp_path / "students"
    weights: dict = {}
    real = qa_runner_mod.predict_answers

    def spy(model, *rest):  # the weights that predicted the stored answers
        weights.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *rest)

    monkeypatch.setattr(qa_runner_mod, "predict_answers", spy)
    assert main(_args(qa_setup, results, "--objective", "kd", "--no-baseline", "--save-students", str(root))) == 0
    (row,) = _rows(results)
    folder = Path(row["extra"]["saved_student"])
    assert folder == (root / "squad-devsplit" / "kd" / re.sub(r"[^A-Za-z0-9.,_+-]", "_", row["init"]) / f"seed0-{row['run_key']}").resolve()
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 64  # --max-length 64
    stored = load_file(folder / "model.safetensors")
    assert "qa_outputs.weight" in stored and all(torch.equal(stored[k], weights[k]) for k in stored)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForQuestionAnswering.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    task = get_task("squad-devsplit")
    cfg = RunConfig(max_length=tokenizer.model_max_length)
    dev = load_split(task, "dev", qa_setup["data"])
    answers = predict_answers(model, encode_qa(tokenizer, dev, *window_settings(cfg, task)), task, cfg, Accelerator(cpu=True))
    metrics = score_answers(task, dev, answers)
    values, qids, _ = dev_results(answers, task, dev, metrics)
    assert qids == row["extra"]["dev_labels"]
    assert [round(v, 6) for v in values] == row["extra"]["dev_predictions"]
    assert metrics["f1"] == pytest.approx(row["score"], abs=1e-9) and metrics["exact"] == pytest.approx(row["metrics"]["exact"])

    card = (folder / "README.md").read_text()
    meta = json.loads((folder / "distilbench.json").read_text())
    check = check_rows([row])
    assert meta["family"] == "extractive-qa" and meta["pipeline_tag"] == "question-answering"
    assert meta["signal_check"]["floor"] == check.floor and check.floor.startswith("question-blind floor")
    assert meta["dev"]["examples"] == 72 and meta["tokenizer"]["model_max_length"] == 64
    verdict = "at chance" if check.at_chance else "above chance"
    for text in ("pipeline_tag: question-answering", "from transformers import AutoModelForQuestionAnswering",
                 "AutoModelForQuestionAnswering.from_pretrained", "72 questions",
                 f"f1 (main) | {100 * row['score']:.2f} | {100 * row['teacher_score']:.2f}",
                 f"Signal check: {verdict}** ({check.floor} {check.majority:.2f}", "`squad-v1.1/`"):
        assert text in card, text
    assert "majority class" not in card and "AutoModelForSequenceClassification" not in card
    assert "--data-dir GLUE_DIR" not in card  # the data folder named generically: squad-v1.1/, not GLUE's
    # `distilbench export` rewrites the same card from the stored row alone
    assert main(["export", "--results", str(results), "--run-key", row["run_key"], "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "README.md").read_text() == card

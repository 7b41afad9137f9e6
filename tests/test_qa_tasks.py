"""The extractive QA task family: declarations, the SQuAD-format reader (strict on bad input) and the by-article
split of the offline SQuAD v1.1 dev set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distilbench.config import RunConfig
from distilbench.data.qa_tasks import QAExample, QATask, article_split, load_qa_split, qa_task_from_yaml, read_squad_json
from distilbench.data.tasks import TASKS, get_task, load_split
from distilbench.errors import DataError, UsageError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SQUAD_DEV = SHARED / "squad-v1.1" / "dev-v1.1.json"
needs_squad = pytest.mark.skipif(not SQUAD_DEV.is_file(), reason=f"SQuAD v1.1 dev not found at {SQUAD_DEV}")

CONTEXT = "Super Bowl 50 was played at Levi's Stadium in Santa Clara."


def squad_file(tmp_path: Path, qas: list[dict], context: str = CONTEXT, name: str = "dev.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"version": "1.1", "data": [
        {"title": "Super_Bowl_50", "paragraphs": [{"context": context, "qas": qas}]}]}), encoding="utf-8")
    return path


def qa(qid: str, question: str = "Where?", answers: list[tuple[str, int]] = (("Levi's Stadium", 28),), **extra) -> dict:
    return {"id": qid, "question": question, "answers": [{"text": t, "answer_start": s} for t, s in answers], **extra}


# --------------------------------------------------------------------------- declarations


def test_squad_tasks_are_registered_as_extractive_qa():
    v1, v2, split = get_task("squad"), get_task("squad_v2"), get_task("squad-devsplit")
    assert {"squad", "squad_v2", "squad-devsplit"} <= set(TASKS.names())
    assert all(isinstance(t, QATask) and t.family == "extractive-qa" for t in (v1, v2, split))
    assert (v1.hub_path, v1.hub_config, v1.with_negative) == ("rajpurkar/squad", "plain_text", False)
    assert (v2.hub_path, v2.hub_config, v2.with_negative) == ("rajpurkar/squad_v2", "squad_v2", True)
    for t in (v1, v2, split):
        assert t.metrics == ("exact", "f1") and t.main_score == "f1" and t.higher_is_better
        assert (t.max_length, t.doc_stride, t.n_best, t.max_answer_length) == (384, 128, 20, 30)
        assert isinstance(t.version, str)
    assert get_task("SQuAD-v1.1") is v1 and get_task("squad-v2") is v2
    assert split.derived_split == {"source": "dev", "seed": 20261201, "test_articles": 12}
    assert split.provenance.startswith("NOT SQuAD v1.1 dev") and "not comparable" in split.provenance
    assert get_task("rte").family == "sequence-classification" and get_task("rte").kind == "2 labels"
    assert v2.kind == "extractive QA, with unanswerable questions"


def test_task_file_with_bad_windows_is_refused():
    spec = {"name": "x", "version": "1", "family": "extractive-qa", "folder": "x", "files": {"train": "a", "dev": "b"},
            "with_negative": False, "metrics": ["exact", "f1"], "main_score": "f1",
            "hub": {"path": "p", "config": "c", "dev_split": "validation"}}
    assert qa_task_from_yaml(spec, "x.yaml").doc_stride == 128
    with pytest.raises(ValueError, match="doc_stride 384 must be .* below max_length 384"):
        qa_task_from_yaml({**spec, "windows": {"max_length": 384, "doc_stride": 384}}, "x.yaml")
    with pytest.raises(ValueError, match="x.yaml .*'folder'"):
        qa_task_from_yaml({k: v for k, v in spec.items() if k != "folder"}, "x.yaml")


def test_run_windows_follow_the_task_unless_max_length_is_set():
    """`run` trains QA now (tests/test_qa_run.py); its windows are the task's, or --max-length's at the task's ratio."""
    from distilbench.data.qa import window_settings

    task = get_task("squad")
    assert window_settings(RunConfig(task="squad"), task) == (384, 128, 64)
    assert window_settings(RunConfig(task="squad", max_length=256), task) == (256, 85, 64)


# --------------------------------------------------------------------------- reading


def test_reads_questions_with_several_answers_in_file_order(tmp_path):
    path = squad_file(tmp_path, [qa("q1", answers=[("Levi's Stadium", 28), ("Santa Clara", 46)]),
                                 qa("q2", "Which game?", [("Super Bowl 50", 0)])])
    task = get_task("squad")
    examples = read_squad_json(task, path)
    assert [(e.idx, e.qid, e.title) for e in examples] == [(0, "q1", "Super_Bowl_50"), (1, "q2", "Super_Bowl_50")]
    assert [a.text for a in examples[0].answers] == ["Levi's Stadium", "Santa Clara"]
    assert all(e.context[a.start:a.start + len(a.text)] == a.text for e in examples for a in e.answers)


def test_v2_reads_unanswerable_questions_and_v1_refuses_them(tmp_path):
    path = squad_file(tmp_path, [qa("q1"), qa("q2", "Who won?", [], is_impossible=True,
                                               plausible_answers=[{"text": "Santa Clara", "answer_start": 46}])])
    examples = read_squad_json(get_task("squad_v2"), path)
    assert [e.answerable for e in examples] == [True, False] and examples[1].answers == ()
    with pytest.raises(DataError, match=r"qas\[1\] \(id 'q2'\): no answers"):
        read_squad_json(get_task("squad"), path)


@pytest.mark.parametrize("content, message", [
    ('{"data": [', "not valid JSON"),
    ('{"data": [{"title": "t", "paragraphs": [{"qas": []}]}]}', "not SQuAD format"),
    ('{"data": []}', "no questions"),
])
def test_malformed_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        read_squad_json(get_task("squad"), path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_answer_not_at_its_start_and_duplicate_ids_are_refused(tmp_path):
    shifted = squad_file(tmp_path, [qa("q1", answers=[("Levi's Stadium", 27)])], name="shifted.json")
    with pytest.raises(DataError, match=r"id 'q1'.*answer \"Levi's Stadium\" is not at its answer_start 27"):
        read_squad_json(get_task("squad"), shifted)
    twice = squad_file(tmp_path, [qa("q1"), qa("q1")], name="twice.json")
    with pytest.raises(DataError, match="'q1' occurs twice"):
        read_squad_json(get_task("squad"), twice)


def test_missing_local_file_names_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"squad-v1.1/train-v1.1.json inside the data folder"):
        load_split(get_task("squad"), "train", tmp_path)
    with pytest.raises(UsageError, match="unknown split 'test'"):
        load_qa_split(get_task("squad"), "test", tmp_path)


def _hub_rows(monkeypatch, rows) -> list:
    import sys
    import types

    calls: list = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        if isinstance(rows, Exception):
            raise rows
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_rows_become_questions_and_are_checked(monkeypatch):
    answered = {"id": "a", "title": "SB", "context": CONTEXT, "question": "Where?",
                "answers": {"text": ["Levi's Stadium"], "answer_start": [28]}}
    impossible = {**answered, "id": "b", "answers": {"text": [], "answer_start": []}}
    calls = _hub_rows(monkeypatch, [answered, impossible])
    out = load_split(get_task("squad_v2"), "dev", None)
    assert calls == [(("rajpurkar/squad_v2", "squad_v2"), {"split": "validation"})]
    assert [(e.idx, e.qid, e.answerable) for e in out] == [(0, "a", True), (1, "b", False)]
    _hub_rows(monkeypatch, [{**answered, "answers": {"text": ["Levi's Stadium"], "answer_start": [3]}}])
    with pytest.raises(DataError, match=r"rajpurkar/squad/plain_text validation row 0 \(id 'a'\): answer .* not at"):
        load_split(get_task("squad"), "dev", None)
    _hub_rows(monkeypatch, ConnectionError("no route to host"))
    with pytest.raises(DataError, match=r"could not load rajpurkar/squad/plain_text .*offline.*--data-dir"):
        load_split(get_task("squad"), "train", None)


# --------------------------------------------------------------------------- the by-article split


def _article_examples(titles: list[str]) -> list[QAExample]:
    return [QAExample(i, f"q{i}", t, "c", "q", ()) for i, t in enumerate(titles)]


def test_article_split_keeps_articles_whole_and_is_seeded():
    examples = _article_examples([f"t{i // 3}" for i in range(30)])  # 10 articles of 3 questions
    train, test = article_split(examples, seed=7, test_articles=3)
    assert len(test) == 9 and len(train) == 21
    assert not {e.title for e in train} & {e.title for e in test}
    assert sorted(e.qid for e in train + test) == sorted(e.qid for e in examples)
    assert [e.idx for e in test] == list(range(9)) and [e.idx for e in train] == list(range(21))
    assert article_split(examples, seed=7, test_articles=3) == (train, test)
    assert {e.title for e in article_split(examples, seed=8, test_articles=3)[1]} != {e.title for e in test}
    with pytest.raises(DataError, match="leaves no training article"):
        article_split(examples, seed=7, test_articles=10)


@needs_squad
def test_squad_devsplit_partitions_the_offline_dev_set_by_article():
    task = get_task("squad-devsplit")
    train, dev = load_split(task, "train", SHARED), load_split(task, "dev", SHARED)
    assert len({e.title for e in dev}) == 12 and len({e.title for e in train}) == 36
    assert not {e.title for e in train} & {e.title for e in dev}
    assert len(train) + len(dev) == 10_570 and not {e.qid for e in train} & {e.qid for e in dev}
    assert (len(train), len(dev)) == (8_100, 2_470)  # fixed by the seed in the YAML (and stated in its provenance)

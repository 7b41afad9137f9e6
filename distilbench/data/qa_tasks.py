"""Extractive question answering tasks (SQuAD v1.1 and v2.0): declared in ``registry/tasks/*.yaml`` with
``family: extractive-qa``, read from SQuAD-format JSON or from the hub.

Every answer is checked against its context (its text must stand at its ``answer_start``) and every malformed file
stops the run with its path and the question's place in it, so that scores are always computed on the whole split.
Pure Python (no torch, no numpy): ``distilbench report`` reads task definitions.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..config import task_defaults
from ..errors import DataError, UsageError

FAMILY = "extractive-qa"
QA_SPLITS = ("train", "dev")


@dataclass(frozen=True)
class QATask:
    """One extractive QA task as declared in its YAML file (see ``registry/tasks/squad.yaml`` for the schema)."""

    name: str
    version: str
    folder: str  # inside the data folder: <data_dir>/<folder>/<file>
    files: dict[str, str] = field(hash=False)  # split -> JSON file name
    with_negative: bool  # SQuAD v2.0: unanswerable questions exist (empty answer lists)
    metrics: tuple[str, ...]
    main_score: str
    higher_is_better: bool
    hub_path: str
    hub_config: str
    hub_splits: dict[str, str] = field(hash=False)
    # windows over long contexts: tokens per window, context tokens shared by consecutive windows (the tokenizer's
    # ``stride``), question tokens kept
    max_length: int = 384
    doc_stride: int = 128
    max_question_length: int = 64
    # post-processing: candidates per window and per question, longest answer in tokens, v2 no-answer margin
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0
    # a task carved out of one public split by article: {source, seed, test_articles}
    derived_split: dict[str, Any] | None = field(default=None, hash=False)
    provenance: str | None = None
    family: str = FAMILY
    run_defaults: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # as Task.run_defaults
    offline: str | None = None  # as Task.offline

    @property
    def regression(self) -> bool:  # read by code written for every task: a span is no regression target
        return False

    # what the family's models read and write (as data.tasks.Task's)
    sentence_level = False
    causal = False
    span_output = True
    percent = True

    @property
    def kind(self) -> str:
        return "extractive QA" + (", with unanswerable questions" if self.with_negative else "")


@dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset of ``text`` in the context


@dataclass(frozen=True)
class QAExample:
    idx: int  # question index within the split (0-based, stable)
    qid: str  # the dataset's question id
    title: str  # the article: derived splits keep each article on one side
    context: str
    question: str
    answers: tuple[Answer, ...]  # empty: unanswerable (v2.0)

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


# --------------------------------------------------------------------------- declaration


def qa_task_from_yaml(spec: dict[str, Any], source: str) -> QATask:
    """A :class:`QATask` from its YAML mapping; a missing or malformed field is a ValueError naming ``source``."""
    try:
        hub, windows, answers = spec["hub"], spec.get("windows", {}), spec.get("answers", {})
        task = QATask(
            name=str(spec["name"]).lower(), version=str(spec["version"]), folder=str(spec["folder"]),
            files=dict(spec["files"]), with_negative=bool(spec["with_negative"]), metrics=tuple(spec["metrics"]),
            main_score=str(spec["main_score"]), higher_is_better=bool(spec.get("higher_is_better", True)),
            hub_path=hub["path"], hub_config=hub["config"],
            hub_splits={"train": hub.get("train_split", "train"), "dev": hub["dev_split"]},
            max_length=int(windows.get("max_length", 384)), doc_stride=int(windows.get("doc_stride", 128)),
            max_question_length=int(windows.get("max_question_length", 64)),
            n_best=int(answers.get("n_best", 20)), max_answer_length=int(answers.get("max_answer_length", 30)),
            null_threshold=float(answers.get("null_threshold", 0.0)),
            derived_split=_derived_spec(spec.get("derived_split"), spec["files"]),
            provenance=" ".join(str(spec["provenance"]).split()) if spec.get("provenance") else None,
            run_defaults=task_defaults(spec.get("defaults"), source),
            offline=spec.get("offline"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"task file {source} is missing or has a malformed field: {exc!r}") from exc
    check_windows(task.max_length, task.doc_stride, task.max_question_length, ValueError)
    if task.main_score not in task.metrics or task.n_best < 1 or task.max_answer_length < 1:
        raise ValueError(f"task file {source}: main_score must be one of metrics, n_best and max_answer_length >= 1")
    return task


def check_windows(max_length: int, doc_stride: int, max_question_length: int, error: type[Exception] = UsageError) -> None:
    """Windows need room for the question and for more context than consecutive windows share."""
    if not 0 <= doc_stride < max_length:
        raise error(f"doc_stride {doc_stride} must be at least 0 and below max_length {max_length}: consecutive "
                    f"windows share doc_stride context tokens")
    if not 0 < max_question_length < max_length:
        raise error(f"max_question_length {max_question_length} must be above 0 and below max_length {max_length}")


def _derived_spec(value: Any, files: dict[str, str]) -> dict[str, Any] | None:
    if value is None:
        return None
    spec = {"source": str(value["source"]), "seed": int(value["seed"]), "test_articles": int(value["test_articles"])}
    if spec["source"] not in files or spec["test_articles"] <= 0:
        raise KeyError("derived_split: source must name a split of files, test_articles must be > 0")
    return spec


# --------------------------------------------------------------------------- reading


def _check_answer(context: str, text: Any, start: Any, where: str) -> Answer:
    if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int):
        raise DataError(f"{where}: an answer needs a non-empty text and an integer answer_start; got {text!r} at {start!r}")
    found = context[start:start + len(text)] if 0 <= start else ""
    if found != text:
        raise DataError(f"{where}: answer {text!r} is not at its answer_start {start} in the context "
                        f"(found {found!r} there)")
    return Answer(text, start)


def _question(task: QATask, n: int, qid: Any, title: str, context: str, question: Any, answers: list[Answer],
              impossible: bool, where: str) -> QAExample:
    if not isinstance(qid, str) or not isinstance(question, str) or not isinstance(context, str):
        raise DataError(f"{where}: id, question and context must be strings")
    if impossible and answers:
        raise DataError(f"{where}: marked is_impossible but lists {len(answers)} answer(s)")
    if not answers and not task.with_negative:
        raise DataError(f"{where}: no answers; every {task.name} question needs one (unanswerable questions are "
                        f"SQuAD v2.0's: use a task with with_negative)")
    return QAExample(n, qid, title, context, question, tuple(answers))


def read_squad_json(task: QATask, path: Path) -> list[QAExample]:
    """Every question of a SQuAD-format file ({"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}),
    in file order; anything malformed is a DataError naming the file and the question's place."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    examples: list[QAExample] = []
    try:
        for a, article in enumerate(doc["data"]):
            title = str(article.get("title", f"article {a}"))
            for p, paragraph in enumerate(article["paragraphs"]):
                context = paragraph["context"]
                for q, qa in enumerate(paragraph["qas"]):
                    where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}] (id {qa.get('id')!r})"
                    answers = [_check_answer(context, x.get("text"), x.get("answer_start"), where) for x in qa["answers"]]
                    examples.append(_question(task, len(examples), qa["id"], title, context, qa["question"], answers,
                                              bool(qa.get("is_impossible", False)), where))
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not SQuAD format (data[].paragraphs[].qas[] with id, question, answers): "
                        f"missing or malformed {exc}") from exc
    return _checked(examples, str(path))


def _checked(examples: list[QAExample], what: str) -> list[QAExample]:
    if not examples:
        raise DataError(f"{what}: no questions; a split needs at least one")
    seen: set[str] = set()
    for e in examples:
        if e.qid in seen:
            raise DataError(f"{what}: question id {e.qid!r} occurs twice")
        seen.add(e.qid)
    return examples


def _load_hub(task: QATask, split: str) -> list[QAExample]:
    name, hub_split = f"{task.hub_path}/{task.hub_config}", task.hub_splits[split]
    try:
        import datasets

        rows: Iterable[dict[str, Any]] = datasets.load_dataset(task.hub_path, task.hub_config, split=hub_split)
    except Exception as exc:  # offline, missing package, unknown config: all need the same fix
        raise DataError(f"could not load {name} (split {hub_split}) from the hub (offline?): {type(exc).__name__}: "
                        f"{exc}; pass --data-dir pointing at a folder holding {task.folder}/") from exc
    examples = []
    for i, row in enumerate(rows):
        where = f"{name} {hub_split} row {i} (id {row.get('id')!r})"
        got = row["answers"]
        answers = [_check_answer(row["context"], t, s, where) for t, s in zip(got["text"], got["answer_start"])]
        examples.append(_question(task, i, row["id"], row["title"], row["context"], row["question"], answers, False, where))
    return _checked(examples, f"{name} split {hub_split}")


def _load_source(task: QATask, split: str, data_dir: Path | None) -> list[QAExample]:
    if data_dir is None:
        return _load_hub(task, split)
    path = Path(data_dir) / task.folder / task.files[split]
    if not path.is_file():
        raise DataError(f"{path} does not exist: the {split} split of {task.name} is read from "
                        f"{task.folder}/{task.files[split]} inside the data folder (pass --data-dir pointing at the "
                        f"folder that holds {task.folder}/){offline_hint(task)}")
    return read_squad_json(task, path)


def offline_hint(task) -> str:
    """The missing-file error's pointer to the task that runs on what exists offline (``offline:`` in the task file)."""
    if not task.offline:
        return ""
    return (f"; offline, --task {task.offline} is carved out of the files that are here (its numbers are not "
            f"comparable to {task.name}'s)")


def article_split(examples: list[QAExample], seed: int, test_articles: int) -> tuple[list[QAExample], list[QAExample]]:
    """(train, test): ``test_articles`` whole articles drawn with ``seed`` go to test, the others to train; no article
    is on both sides. Each part keeps file order and is re-indexed from 0."""
    titles = list(dict.fromkeys(e.title for e in examples))  # file order, once each
    if test_articles >= len(titles):
        raise DataError(f"test_articles {test_articles} leaves no training article among the source's {len(titles)}")
    random.Random(seed).shuffle(titles)
    test = set(titles[:test_articles])
    parts = ([e for e in examples if e.title not in test], [e for e in examples if e.title in test])
    return tuple([QAExample(i, e.qid, e.title, e.context, e.question, e.answers) for i, e in enumerate(part)]
                 for part in parts)  # type: ignore[return-value]


def load_qa_split(task: QATask, split: str, data_dir: Path | None) -> list[QAExample]:
    """All questions of ``split`` ("train" or "dev"), from ``<data_dir>/<folder>/<file>`` or, when ``data_dir`` is
    None, from the hub. A task with ``derived_split`` reads its source split and returns its side of the article split
    ("dev" = the test articles)."""
    if split not in QA_SPLITS:
        raise UsageError(f"unknown split {split!r} for task {task.name}; accepted: {', '.join(QA_SPLITS)}")
    spec = task.derived_split
    if spec is None:
        return _load_source(task, split, data_dir)
    train, test = article_split(_load_source(task, spec["source"], data_dir), spec["seed"], spec["test_articles"])
    return test if split == "dev" else train

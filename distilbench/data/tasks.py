"""GLUE tasks: declared as data in ``registry/tasks/*.yaml``, loaded from a GLUE_DIR folder or the hub. The same
registry holds the extractive QA tasks (``family: extractive-qa``), defined and read in :mod:`.qa_tasks`, and
causal-LM corpora (``family: causal-lm``, e.g. ``wikitext2.yaml``): a split is its text's lines (see ``data/lm.py``).

Why a hand-written TSV reader: the GLUE files are not valid CSV. Quotes are ordinary characters (MRPC,
STS-B), CoLA has no header, MRPC's header starts with a UTF-8 BOM, and a bad row must stop the run with
its file and line number instead of being skipped, so that scores are always computed on the full split.
"""
from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ..config import task_defaults
from ..errors import DataError, UsageError
from ..plugins import Registry
from .metrics import compute_metrics
from .qa_tasks import FAMILY as QA_FAMILY
from .qa_tasks import QAExample, QATask, load_qa_split, offline_hint, qa_task_from_yaml
from .tsv import parse_label, tsv_lines

SPLITS = ("train", "dev")
LAYOUT_HINT = ("pass --data-dir pointing at the folder that holds the task's data (GLUE: RTE/train.tsv, ...; SQuAD: "
               "squad-v1.1/; WikiText: wikitext-2-tokens/) or set GLUE_DIR")


@dataclass(frozen=True)
class Task:
    """One GLUE task as declared in its YAML file (see ``registry/tasks/rte.yaml`` for the schema)."""

    name: str
    version: str
    glue_dir: str
    files: dict[str, str] = field(hash=False)  # split -> file name inside <data_dir>/<glue_dir>
    text_columns: tuple[str, ...]  # hub column names of text_a (and text_b)
    labels: tuple[str, ...] | None  # canonical GLUE order = integer ids; None for regression
    regression: bool
    metrics: tuple[str, ...]
    main_score: str
    higher_is_better: bool
    hub_path: str
    hub_config: str
    hub_splits: dict[str, str] = field(hash=False)  # split -> hub split name
    # TSV format: columns by name when the file has a header, by 0-based index when it has none (CoLA)
    tsv_header: bool = True
    tsv_text_columns: tuple[str | int, ...] = ()
    tsv_label_column: str | int = "label"
    tsv_num_columns: int | None = None  # required width of header-less files
    label_values: tuple[str, ...] | None = None  # TSV spelling of each label, same order as labels
    label_range: tuple[float, float] | None = None  # allowed regression scores (STS-B: 0-5)
    # A task carved out of one public split (QNLI has only its dev set offline): {source, seed, test_size}. Both
    # "train" and "dev" are read from the source split and partitioned once by a seeded permutation.
    derived_split: dict[str, Any] | None = field(default=None, hash=False)
    provenance: str | None = None  # printed under every table that shows the task (where its data really comes from)
    family: str = "sequence-classification"  # (and regression) | causal-lm (see _lm_task); QA tasks are qa_tasks.QATask
    # the task's own run defaults (RunConfig field -> value), between the harness's and the user's: a causal-LM
    # corpus names the from-scratch teacher and the learning rates that train one (``defaults:`` in its YAML)
    run_defaults: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # a task that runs on the files that exist offline when this one's do not (qnli -> qnli-devsplit): named in the
    # missing-file error, never substituted silently (its numbers are not comparable)
    offline: str | None = None

    # what the family's models read and write, for code that serves every family (objectives, checks, reports):
    # one label or score per example from a sentence representation (--pooling applies); next-token prediction
    # (causal attention; perplexity); start/end scores per token (extractive QA: qa_tasks.QATask); scores that are
    # shares, shown x 100 (perplexity is not)
    sentence_level = property(lambda self: self.family == "sequence-classification")
    causal = property(lambda self: self.family == "causal-lm")
    span_output = False
    percent = property(lambda self: not self.causal)

    @property
    def kind(self) -> str:
        if self.causal:
            return "causal LM"
        return "regression" if self.regression else f"{self.num_labels} labels"

    @property
    def num_labels(self) -> int:
        """Output width of a model head: 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    def majority_score(self, labels: Sequence[int]) -> float | None:
        """Main score of always predicting the most frequent label id (ties: the lowest id) — the floor a
        trained student must beat. None for regression or when there are no labels."""
        if self.regression or self.causal or not len(labels):  # an LM has no majority class
            return None
        counts = Counter(int(y) for y in labels)
        top = min(counts, key=lambda y: (-counts[y], y))

        return compute_metrics(self, [top] * len(labels), labels)["score"]


@dataclass(frozen=True)
class Example:
    idx: int  # row index within the split (0-based, stable)
    text_a: str
    text_b: str | None
    label: int | float  # class id in Task.labels order, or float score for regression


# --------------------------------------------------------------------------- registry from YAML
def _task_dir():
    """The YAML folder: ``<repo>/registry/tasks`` in a source checkout first (an editable install maps the package
    data to the checkout it was made from, maybe another worktree), else the installed wheel's package data."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "registry" / "tasks").is_dir():
        return root / "registry" / "tasks"
    try:
        return files("distilbench._registry") / "tasks"
    except ImportError:  # ModuleNotFoundError: running from a source checkout without install
        return Path(__file__).resolve().parents[2] / "registry" / "tasks"


def _task_from_yaml(spec: dict[str, Any], source: str) -> Task:
    if spec.get("family") == "causal-lm":
        return _lm_task(spec, source)
    try:
        fmt, hub = spec["format"], spec["hub"]
        if not fmt.get("header", True) and not fmt.get("num_columns"):
            raise KeyError("format.num_columns (required when header is false)")
        labels = spec.get("labels")
        values = spec.get("label_values")
        rng = spec.get("label_range")
        return Task(
            name=str(spec["name"]).lower(),
            version=str(spec["version"]),
            glue_dir=spec["glue_dir"],
            files=dict(spec["files"]),
            text_columns=tuple(spec["text_columns"]),
            labels=tuple(str(x) for x in labels) if labels is not None else None,
            regression=bool(spec.get("regression", False)),
            metrics=tuple(spec["metrics"]),
            main_score=spec["main_score"],
            higher_is_better=bool(spec.get("higher_is_better", True)),
            hub_path=hub["path"],
            hub_config=hub["config"],
            hub_splits={"train": hub.get("train_split", "train"), "dev": hub["dev_split"]},
            tsv_header=bool(fmt.get("header", True)),
            tsv_text_columns=tuple(fmt["text_columns"]),
            tsv_label_column=fmt["label_column"],
            tsv_num_columns=fmt.get("num_columns"),
            label_values=tuple(str(x) for x in values) if values is not None else None,
            label_range=(float(rng[0]), float(rng[1])) if rng is not None else None,
            derived_split=_derived_spec(spec.get("derived_split"), spec["files"], source),
            provenance=" ".join(str(spec["provenance"]).split()) if spec.get("provenance") else None,
            offline=spec.get("offline"),
        )
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"task file {source} is missing or has a malformed field: {exc!r}") from exc


def _lm_task(spec: dict[str, Any], source: str) -> Task:
    """A causal-LM corpus (``registry/tasks/wikitext2.yaml``): ``folder`` inside --data-dir holds one text file per
    split (``files``: train, dev); the hub dataset has a ``text`` column of lines (``hub: null``: a corpus read only
    from a user's own files, e.g. OpenWebText, whose hub copy has no test split). Scored by perplexity
    (``metrics``, ``main_score``, ``higher_is_better: false``, declared in the file)."""
    try:
        hub = spec["hub"] or {"path": "", "config": "", "train_split": "", "dev_split": ""}
        return Task(name=str(spec["name"]).lower(), version=str(spec["version"]), glue_dir=spec["folder"],
                    files={"train": spec["files"]["train"], "dev": spec["files"]["dev"]}, text_columns=("text",),
                    labels=None, regression=False, metrics=tuple(spec["metrics"]), main_score=spec["main_score"],
                    higher_is_better=bool(spec["higher_is_better"]), hub_path=hub["path"], hub_config=hub["config"],
                    hub_splits={"train": hub["train_split"], "dev": hub["dev_split"]}, family="causal-lm",
                    provenance=" ".join(str(spec["provenance"]).split()),
                    run_defaults=task_defaults(spec.get("defaults"), source))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"task file {source} is missing or has a malformed field: {exc!r}") from exc


def task_run_defaults(name: str) -> dict[str, Any]:
    """Task ``name``'s own run defaults (empty for most tasks); an unknown name is the usual UsageError."""
    return dict(get_task(name).run_defaults)


def _derived_spec(value: Any, files: dict[str, str], source: str) -> dict[str, Any] | None:
    if value is None:
        return None
    spec = {"source": str(value["source"]), "seed": int(value["seed"]), "test_size": int(value["test_size"])}
    if spec["source"] not in files or spec["test_size"] <= 0:
        raise KeyError(f"derived_split in {source}: source must name a split of files, test_size must be > 0")
    return spec


def _load_registry() -> Registry[Task | QATask]:
    registry: Registry[Task | QATask] = Registry("task")
    entries = sorted((e for e in _task_dir().iterdir() if e.name.endswith(".yaml")), key=lambda e: e.name)
    for entry in entries:
        spec = yaml.safe_load(entry.read_text(encoding="utf-8"))
        family = spec.get("family", "sequence-classification")
        if family not in ("sequence-classification", "causal-lm", QA_FAMILY):
            raise ValueError(f"task file {entry.name}: unknown family {family!r}")
        task = qa_task_from_yaml(spec, entry.name) if family == QA_FAMILY else _task_from_yaml(spec, entry.name)
        registry.register(task.name, task, aliases=tuple(a.lower() for a in spec.get("aliases", ())))
    return registry


TASKS: Registry[Task | QATask] = _load_registry()


def get_task(name: str) -> Task | QATask:
    """Look a task up case-insensitively ("RTE" works); unknown -> UsageError with did-you-mean. Its ``family`` says
    which kind it is: ``sequence-classification`` or ``causal-lm`` (a :class:`Task`) or ``extractive-qa`` (a
    :class:`QATask`)."""
    return TASKS.get(name.strip().lower())


# --------------------------------------------------------------------------- data


def resolve_data_dir(value: str | os.PathLike | None) -> Path | None:
    """The --data-dir flag if given, else $GLUE_DIR, else None (= read from the hub).

    A named folder that does not exist is refused up front, before any run writes results.
    """
    for given, what in ((value, "data folder"), (os.environ.get("GLUE_DIR"), "GLUE_DIR folder")):
        if given is None or str(given) == "":
            continue
        path = Path(given).expanduser()
        if not path.exists():
            raise UsageError(f"{what} {path} does not exist; {LAYOUT_HINT}")
        if not path.is_dir():
            raise UsageError(f"{what} {path} is a file, not a folder; {LAYOUT_HINT}")
        return path.resolve()
    return None


def _check_split(task: Task, split: str) -> None:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r} for task {task.name}; accepted: {', '.join(SPLITS)}")


def _read_tsv(task: Task, path: Path) -> list[Example]:
    """Read one GLUE TSV file strictly: columns by header name (or index), every row checked."""
    rows = tsv_lines(path)
    if task.tsv_header:
        if not rows:
            raise DataError(f"{path}: empty file; expected a header line naming the columns")
        header = rows[0].split("\t")
        wanted = [*task.tsv_text_columns, task.tsv_label_column]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(
                f"{path}:1: header has no column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, header))}"
            )
        width, first = len(header), 1
        text_idx = [header.index(c) for c in task.tsv_text_columns]
        label_idx = header.index(task.tsv_label_column)
    else:
        width, first = int(task.tsv_num_columns or 0), 0
        text_idx = [int(c) for c in task.tsv_text_columns]
        label_idx = int(task.tsv_label_column)

    examples: list[Example] = []
    for lineno, row in enumerate(rows[first:], start=first + 1):
        fields = row.split("\t")
        where = f"{path}:{lineno}"
        if len(fields) != width:
            raise DataError(f"{where}: found {len(fields)} tab-separated columns, expected {width}")
        label = parse_label(task, fields[label_idx], where)
        texts = [fields[i] for i in text_idx]
        examples.append(Example(len(examples), texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples:  # nothing to train on or score: refused here, before a tokenizer fails on an empty batch
        raise DataError(f"{path}: no examples{' below the header' if task.tsv_header else ''}; "
                        f"a split needs at least one row")
    return examples


def _load_hub(task: Task, split: str) -> list[Example]:
    """Read a split of nyu-mll/glue through ``datasets``; any failure becomes a DataError with the fix."""
    name = f"{task.hub_path}/{task.hub_config}"
    try:
        import datasets

        rows: Iterable[dict[str, Any]] = datasets.load_dataset(task.hub_path, task.hub_config, split=task.hub_splits[split])
    except Exception as exc:  # offline, missing package, unknown config: all need the same fix
        raise DataError(
            f"could not load {name} (split {task.hub_splits[split]}) from the hub (offline?): "
            f"{type(exc).__name__}: {exc}; {LAYOUT_HINT}"
        ) from exc
    examples: list[Example] = []
    for i, row in enumerate(rows):
        where = f"{name} {task.hub_splits[split]} row {i}"
        raw = row["label"]
        if task.regression:
            label: int | float = float(raw)
        elif isinstance(raw, int) and 0 <= raw < task.num_labels:
            label = raw
        else:
            raise DataError(f"{where}: label {raw!r} is not a class id in 0..{task.num_labels - 1}")
        texts = [row[c] for c in task.text_columns]
        examples.append(Example(i, texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples:
        raise DataError(f"{name} split {task.hub_splits[split]}: no examples; a split needs at least one row")
    return examples


def load_split(task: Task | QATask, split: str, data_dir: Path | None) -> list[Example] | list[QAExample]:
    """All examples of ``split`` ("train" or "dev"), from ``<data_dir>/<glue_dir>/<file>`` or, when
    ``data_dir`` is None, from the hub. Never skips a row: a bad one raises DataError.

    A task with ``derived_split`` reads its source split and returns its part of a fixed seeded partition:
    ``test_size`` rows as "dev", the rest as "train", each in source order and re-indexed from 0.

    An extractive QA task returns its questions (:func:`distilbench.data.qa_tasks.load_qa_split`)."""
    if isinstance(task, QATask):
        return load_qa_split(task, split, data_dir)  # type: ignore[return-value]
    _check_split(task, split)
    if task.causal:
        return _load_corpus(task, split, data_dir)
    if task.derived_split is not None:
        return _derived_part(task, split, data_dir)
    return _load_source(task, split, data_dir)


def _derived_part(task: Task, split: str, data_dir: Path | None) -> list[Example]:
    spec = task.derived_split
    rows = _load_source(task, spec["source"], data_dir)
    if spec["test_size"] >= len(rows):
        raise DataError(f"task {task.name}: test_size {spec['test_size']} leaves no training rows in its "
                        f"{len(rows)}-row source split")
    order = list(range(len(rows)))
    random.Random(spec["seed"]).shuffle(order)
    test = set(order[: spec["test_size"]])
    keep = [e for e in rows if (e.idx in test) == (split == "dev")]
    return [Example(i, e.text_a, e.text_b, e.label) for i, e in enumerate(keep)]


def _load_source(task: Task, split: str, data_dir: Path | None) -> list[Example]:
    if data_dir is None:
        return _load_hub(task, split)
    folder = Path(data_dir) / task.glue_dir
    path = folder / task.files[split]
    if not folder.is_dir():
        raise DataError(
            f"{folder} does not exist: task {task.name} expects a {task.glue_dir}/ folder with "
            f"{', '.join(task.files.values())} in the data folder (GLUE_DIR layout)"
        )
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: the {split} split of {task.name} is read from "
            f"{task.glue_dir}/{task.files[split]} (GLUE_DIR layout){offline_hint(task)}"
        )
    return _read_tsv(task, path)


def _load_corpus(task: Task, split: str, data_dir: Path | None) -> list[Example]:
    """A causal-LM split as its lines, in order, each with its newline (``text_a``; no label): from
    ``<data_dir>/<folder>/<file>`` or the hub dataset's ``text`` column. An empty split is refused."""
    if data_dir is None and not task.hub_path:
        raise DataError(f"{task.name} is read only from your own copy: pass --data-dir with a folder {task.glue_dir}/ "
                        f"holding {task.files['train']} and {task.files['dev']} (one line of raw text per line)")
    if data_dir is None:
        try:
            import datasets

            lines = list(datasets.load_dataset(task.hub_path, task.hub_config, split=task.hub_splits[split])["text"])
        except Exception as exc:  # offline, missing package, unknown config: all need the same fix
            raise DataError(f"could not load {task.hub_path}/{task.hub_config} (split {task.hub_splits[split]}) from "
                            f"the hub (offline?): {type(exc).__name__}: {exc}; pass --data-dir with a "
                            f"{task.glue_dir}/ folder") from exc
        where = f"{task.hub_path}/{task.hub_config} split {task.hub_splits[split]}"
    else:
        path = Path(data_dir) / task.glue_dir / task.files[split]
        if not path.is_file():
            raise DataError(f"{path} does not exist: the {split} split of {task.name} is read from "
                            f"{task.glue_dir}/{task.files[split]} inside --data-dir")
        lines = [line + "\n" for line in tsv_lines(path)]
        where = str(path)
    if not any(line.strip() for line in lines):
        raise DataError(f"{where}: no text; a corpus split needs at least one non-empty line")
    return [Example(i, line, None, None) for i, line in enumerate(lines)]  # type: ignore[arg-type]

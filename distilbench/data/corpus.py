"""Unlabelled text for task-agnostic (general) distillation: registered corpora, read as lines, split into a training
part and a held-out part, and packed into an encoder's blocks.

A corpus is declared in ``registry/corpora/NAME.yaml`` (``general-local.yaml`` is the one built from what is on disk
here): its ``sources``, each a task's **training** split (``{task: sst2, split: train, dir: glue}``: read through
:func:`.tasks.load_split`, its sentences without labels) or a text file inside the data folder (``{file:
wikitext-2-tokens/valid.txt}``: one line of text per line). Nothing that a fine-tuned student is later scored on
may enter: a task source other than ``split: train`` is refused, and so is a file that any registered task reads as
its dev split (:func:`scored_files`), when the corpus is loaded.

Lines (:func:`corpus_lines`) come in source order, each source's in file order, blank lines dropped; each is kept
whole. The held-out part (:func:`held_out`) is every line whose stable hash (of its source and its text) falls below
``held_out`` (a share, declared in the file): the same lines whatever the order or the other sources.

Packing (:func:`pack_encoder_blocks`): the lines' tokens (each tokenised alone, without special tokens) are
concatenated in order and cut into blocks of ``max_length - 2`` tokens, each wrapped as ``[CLS] tokens [SEP]`` (the
tokenizer's own first and last special tokens, as it wraps one sentence); the last, shorter block is padded, its
padding masked out (``attention_mask`` 0). A block may start or end inside a line, as BERT's and MiniLM's
pre-training data does.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import yaml

from ..errors import DataError, UsageError
from ..plugins import Registry
from .tasks import TASKS, get_task, load_split


@dataclass(frozen=True)
class Source:
    """One part of a corpus: a task's training split (``task``, inside ``dir`` of the data folder) or a text file."""

    task: str | None = None
    split: str = "train"
    dir: str = ""
    file: str | None = None
    label: str | None = None  # its name when not the file's path (a local corpus: the path inside --corpus)

    @property
    def name(self) -> str:
        """What the held-out hash and the size table name it by: ``task/split``, or the file as the corpus names it."""
        return self.label or (f"{self.task}/{self.split}" if self.task else str(self.file))


@dataclass(frozen=True)
class Corpus:
    name: str
    version: str
    sources: tuple[Source, ...]
    held_out: float  # share of the lines held out (the distillation loss a run is scored by)
    provenance: str


def _corpus_dir() -> Path:
    """``<repo>/registry/corpora`` in a source checkout, else the installed wheel's package data."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "registry" / "corpora").is_dir():
        return root / "registry" / "corpora"

    return Path(str(files("distilbench._registry") / "corpora"))


def corpus_from_yaml(spec: dict[str, Any], source: str) -> Corpus:
    """A corpus file's declaration; a source that could let a scored split in is a ValueError naming the file."""
    try:
        sources = tuple(Source(task=s.get("task"), split=str(s.get("split", "train")), dir=str(s.get("dir", "")),
                               file=s.get("file")) for s in spec["sources"])
        corpus = Corpus(name=str(spec["name"]), version=str(spec["version"]), sources=sources,
                        held_out=float(spec["held_out"]), provenance=" ".join(str(spec["provenance"]).split()))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"corpus file {source} is missing or has a malformed field: {exc!r}") from exc
    for s in corpus.sources:
        if (s.task is None) == (s.file is None):
            raise ValueError(f"corpus file {source}: each source names a task or a file, not both or neither")
        if s.task is not None and s.split != "train":
            raise ValueError(f"corpus file {source}: source {s.name}: only a task's train split may enter a corpus "
                             f"(its dev split is what a fine-tuned student is scored on)")
    if not 0.0 < corpus.held_out < 0.5:
        raise ValueError(f"corpus file {source}: held_out must be a share in (0, 0.5) (got {corpus.held_out})")
    return corpus


def corpus_from_path(path: str | Path, held_out_share: float = 0.01) -> Corpus:
    """Any local text as a corpus: a file, or the ``*.txt`` files under a folder (recursively, in path order), one line
    of text per line; a file that a registered task is scored on is refused when it is read, as for a registered
    corpus. Each file is named by its path inside the folder (a file by its own name), so the held-out lines and the
    corpus's identity do not depend on where the text lies."""
    where = Path(path).expanduser().resolve()
    if where.is_file():
        found = [where]
    elif where.is_dir():
        found = sorted(where.rglob("*.txt"))
        if not found:
            raise UsageError(f"--corpus {path}: the folder holds no .txt file (a corpus folder is read as its .txt files)")
    else:
        raise UsageError(f"--corpus {path}: no such file or folder, and no registered corpus of that name "
                         f"(registered: {', '.join(CORPORA)})")
    labels = [f.name if f == where else f.relative_to(where).as_posix() for f in found]
    return Corpus(name=where.name, version="local", sources=tuple(Source(file=str(f), label=n) for f, n in zip(found, labels)),
                  held_out=held_out_share, provenance=f"local text: {where} ({len(found)} file(s))")


def resolve_corpus(value: str) -> Corpus:
    """A registered corpus by name, else a file or folder of local text (:func:`corpus_from_path`)."""
    if value in CORPORA:
        return get_corpus(value)
    if Path(value).expanduser().exists() or "/" in value or value.endswith(".txt"):
        return corpus_from_path(value)
    return get_corpus(value)  # neither: the registry's one line, with its did-you-mean


@dataclass(frozen=True)
class GeneralTask:
    """What an objective reads of its task (``Context.task``) in task-agnostic distillation: unlabelled text packed
    into blocks, no labels and no head; the score is the held-out distillation loss, lower is better."""

    name: str
    family = "general-distillation"
    regression = False
    causal = False  # a bidirectional encoder: attention over every real token
    span_output = False
    sentence_level = False
    labels = None
    percent = False
    higher_is_better = False
    main_score = "held-out loss"


def _load_registry() -> Registry[Corpus]:
    registry: Registry[Corpus] = Registry("corpus")
    for entry in sorted(p for p in _corpus_dir().iterdir() if p.name.endswith(".yaml")):
        corpus = corpus_from_yaml(yaml.safe_load(entry.read_text(encoding="utf-8")), entry.name)
        registry.register(corpus.name, corpus)
    return registry


CORPORA = _load_registry()


def get_corpus(name: str) -> Corpus:
    return CORPORA.get(name)


def scored_files() -> set[str]:
    """Every file, relative to the data folder's task folders (``RTE/dev.tsv``, ``wikitext-2-tokens/test.txt``), that
    a registered task reads as its dev split: what no corpus may read."""
    out = set()
    for name in TASKS:
        task = get_task(name)
        folder = getattr(task, "glue_dir", None) or getattr(task, "folder", None)
        dev = (getattr(task, "files", None) or {}).get("dev")
        if folder and dev:
            out.add(f"{folder}/{dev}")
    return out


def _file_lines(root: Path, source: Source) -> Iterator[str]:
    relative = Path(source.file).as_posix()
    if any(relative == f or relative.endswith("/" + f) for f in scored_files()):
        raise UsageError(f"corpus source {relative} is a split that a registered task is scored on; a corpus reads "
                         f"training text only")
    path = root / relative  # an absolute source (a local corpus, corpus_from_path) stays itself
    if not path.is_file():
        raise DataError(f"{path} does not exist: the corpus source {relative} is read from inside --data-dir")
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")


def _task_lines(root: Path, source: Source) -> Iterator[str]:
    task = get_task(source.task)
    folder = getattr(task, "glue_dir", None) or getattr(task, "folder", None)
    if f"{folder}/{task.files['train']}" in scored_files():  # qnli-devsplit trains on the split QNLI is scored on
        raise UsageError(f"corpus source {source.name}: its training file {folder}/{task.files['train']} is a split that "
                         f"a registered task is scored on; a corpus reads training text only")
    for example in load_split(task, "train", root / source.dir if source.dir else root):
        yield example.text_a
        if example.text_b:
            yield example.text_b


def corpus_lines(corpus: Corpus, data_dir: str | Path) -> Iterator[tuple[str, str]]:
    """``(source name, line)`` for every non-blank line of the corpus, in order, read as it is needed."""
    root = Path(data_dir)
    for source in corpus.sources:
        lines = _task_lines(root, source) if source.task else _file_lines(root, source)
        for line in lines:
            if line.strip():
                yield source.name, line.strip()


def held_out(source: str, line: str, share: float) -> bool:
    """Whether a line belongs to the held-out part: its stable hash (sha256 of source and text) below ``share``."""
    digest = hashlib.sha256(f"{source}\0{line}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


def split_lines(corpus: Corpus, data_dir: str | Path) -> tuple[list[str], list[str]]:
    """The corpus's (training, held-out) lines, each in corpus order."""
    train, held = [], []
    for source, line in corpus_lines(corpus, data_dir):
        (held if held_out(source, line, corpus.held_out) else train).append(line)
    return train, held


@dataclass
class EncoderBlocks:
    """Packed blocks for an encoder: ``input_ids`` and ``attention_mask`` ``[N, max_length]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def pack_encoder_blocks(tokenizer, lines: Sequence[str], max_length: int) -> EncoderBlocks:
    """The lines' tokens concatenated and cut into ``[CLS] ... [SEP]`` blocks of ``max_length`` (module docstring)."""
    if max_length < 3:
        raise UsageError(f"--max-length must be at least 3 for packed encoder blocks (got {max_length})")
    # verbose=False: a line longer than the model's length is expected here (it is cut into blocks below)
    ids = [i for row in tokenizer(list(lines), add_special_tokens=False, verbose=False)["input_ids"] for i in row] if lines else []
    if not ids:
        raise DataError("the corpus has no tokens to pack")
    first, last = _wrap_tokens(tokenizer)
    body = max_length - 2
    blocks, masks = [], []
    for start in range(0, len(ids), body):
        chunk = [first, *ids[start:start + body], last]
        pad = max_length - len(chunk)
        blocks.append(chunk + [tokenizer.pad_token_id] * pad)
        masks.append([1] * len(chunk) + [0] * pad)
    return EncoderBlocks(torch.tensor(blocks), torch.tensor(masks))


def _wrap_tokens(tokenizer) -> tuple[int, int]:
    """The ids the tokenizer puts around one sentence ([CLS]/[SEP], <s>/</s>)."""
    wrapped = tokenizer("")["input_ids"]
    if len(wrapped) != 2:
        raise UsageError(f"{type(tokenizer).__name__} does not wrap a sentence in one first and one last token; "
                         f"packed encoder blocks need a BERT- or RoBERTa-style tokenizer")
    return wrapped[0], wrapped[1]


def describe(corpus: Corpus, data_dir: str | Path, tokenizer=None) -> list[dict[str, Any]]:
    """Per source: lines, whitespace-separated words and (given a tokenizer) tokens; the corpus's size and provenance."""
    out: dict[str, dict[str, Any]] = {}
    for source, line in corpus_lines(corpus, data_dir):
        row = out.setdefault(source, {"source": source, "lines": 0, "words": 0, "tokens": 0 if tokenizer else None})
        row["lines"] += 1
        row["words"] += len(line.split())
        if tokenizer is not None:
            row["tokens"] += len(tokenizer(line, add_special_tokens=False, verbose=False)["input_ids"])
    return list(out.values())


def total(rows: Iterable[dict[str, Any]], key: str) -> int:
    return sum(r[key] or 0 for r in rows)

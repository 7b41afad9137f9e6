"""`--mixed-precision auto` decided per machine (distilbench.training.loop.precision), and the precision as part of a run's identity.

What is pinned: auto picks fp32 on a CPU without bf16 instructions (the probe never runs), fp32 when the probe says
bf16 is not faster, bf16 when it is; the probe runs once per machine and thread count (cached on disk); fp32 run,
teacher and cache keys are byte-identical to those computed before precision was recorded (golden values from the
code before the change); bf16 gives other keys, another cell, another label and another report table, never paired
with fp32; and a tiny real run at bf16 stores its precision everywhere and hands it to its workers' jobs.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distilbench.training.loop import precision
from distilbench.training.runs import runner
from distilbench.training.teachers import teacher, teacher_cache
from distilbench.config import RunConfig
from distilbench.hashing import run_key, stable_hash
from distilbench.data.batching import Encoded
from distilbench.models.inits import parse_init
from distilbench.objectives import get_objective
from distilbench.results.stats import cells_from_rows, compare
from distilbench.results.store import ResultsStore
from distilbench.data.tasks import Example, get_task

AMX = ("AMD EPYC 9999", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
AVX2 = ("AMD EPYC", frozenset({"avx2", "fma"}))


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A CPU-only machine whose cpuinfo and probe the test sets; probe calls are counted."""
    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "cache"))
    state = SimpleNamespace(info=AVX2, speedup=2.0, calls=0)

    def fake_probe():
        state.calls += 1
        return {"fp32_gflops": 100.0, "bf16_gflops": 100.0 * state.speedup, "speedup": state.speedup}

    monkeypatch.setattr(precision, "cpu_info", lambda path="/proc/cpuinfo": state.info)
    monkeypatch.setattr(precision, "probe", fake_probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return state


# --------------------------------------------------------------------------- auto


def test_auto_without_bf16_instructions_is_fp32_and_never_probes(machine):
    machine.info = AVX2
    assert precision.resolve("auto")[0] == "fp32"
    assert machine.calls == 0 and not precision.probe_path().exists()


@pytest.mark.parametrize("speedup, expected", [(0.5, "fp32"), (1.05, "fp32"), (2.0, "bf16")])
def test_auto_with_bf16_instructions_follows_the_probe(machine, speedup, expected):
    machine.info, machine.speedup = AMX, speedup
    chosen, why = precision.resolve("auto")
    assert chosen == expected and machine.calls == 1
    assert f"{speedup:.2f}x" in why  # the reason names what was measured


def test_the_probe_is_cached_per_machine_and_thread_count(machine):
    machine.info = AMX
    assert precision.resolve("auto")[0] == "bf16"
    machine.speedup = 0.5  # a second probe would now say fp32: the cached result must be the one used
    assert precision.resolve("auto")[0] == "bf16" and machine.calls == 1
    stored = json.loads(precision.probe_path().read_text())
    assert len(stored) == 1
    (entry,) = stored.values()
    assert entry["speedup"] == 2.0 and entry["cpu"] == AMX[0] and entry["threads"] == torch.get_num_threads()
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(old + 1)  # another thread count is another measurement
        assert precision.resolve("auto")[0] == "fp32" and machine.calls == 2
    finally:
        torch.set_num_threads(old)
    machine.info = ("Another CPU", AMX[1])  # and so is another CPU model
    precision.resolve("auto")
    assert machine.calls == 3 and len(json.loads(precision.probe_path().read_text())) == 3


def test_explicit_requests_and_cuda(machine, monkeypatch):
    machine.info = AMX
    assert [precision.resolve(r)[0] for r in ("no", "fp32", "bf16", "fp16")] == ["fp32", "fp32", "bf16", "fp16"]
    assert machine.calls == 0  # an explicit request is never second-guessed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve("auto")[0] == "bf16"
    assert precision.resolve("auto", cpu=True)[0] == "bf16" and machine.calls == 1  # --cpu: the CPU decides
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve("auto")[0] == "fp32"
    with pytest.raises(ValueError, match="auto, no, fp32, bf16, fp16"):
        precision.resolve("fp8")


def test_cpu_info_reads_model_and_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16\n")
    model, flags = precision.cpu_info(str(info))
    assert model == "Some CPU" and flags == {"fpu", "avx2", "amx_bf16"} and precision.has_bf16_instructions(flags)
    assert precision.cpu_info(str(tmp_path / "missing")) == ("unknown", frozenset())
    assert not precision.has_bf16_instructions(frozenset({"avx2", "avx512f"}))


def test_the_real_probe_measures_both_precisions():
    shapes = ((32, 64, 64), (32, 64, 128))
    result = precision.probe(shapes, repeats=1)
    assert result["fp32_gflops"] > 0 and result["bf16_gflops"] > 0
    assert result["speedup"] == pytest.approx(result["bf16_gflops"] / result["fp32_gflops"])
    assert precision.flops(shapes) == 2 * 32 * 64 * 64 + 2 * 32 * 64 * 128


def test_bad_mixed_precision_is_refused(tmp_path, capfd):
    from distilbench.cli import main

    results = tmp_path / "results.sqlite"
    capfd.readouterr()
    assert main(["run", "--mixed-precision", "fp8", "--results", str(results)]) == 2
    err = capfd.readouterr().err.splitlines()
    assert err == ["distilbench: error: argument --mixed-precision: invalid choice: 'fp8' (choose from 'auto', 'no', "
                   "'fp32', 'bf16', 'fp16') (see `distilbench run --help`)"]
    assert not results.exists()


# --------------------------------------------------------------------------- identities

# computed by the code before precision was recorded (git dd2eba9), for the inputs of _inputs(): every fp32 row,
# teacher and cache on disk has keys made this way, and they must not move
GOLDEN = {"run_key": "6a66053a12feeefb", "config_hash": "bc220532127035f5", "teacher_key": "14b831ecadf5fb4d",
          "cache_key": "cbadd65349abca4b", "logits_key": "829899d71c172033"}


def _keys(monkeypatch, precision_: str | None) -> dict[str, str]:
    """Every key a run makes, for fixed inputs; ``None`` calls each function without the new argument."""
    monkeypatch.setattr(teacher, "model_fingerprint", lambda name: "w" * 16)
    cfg = RunConfig(pooling="cls").validate()  # first-token heads: the pooling of every row stored before it was recorded
    task = get_task("rte")
    dev = [Example(i, f"a{i}", f"b{i}", i % 2) for i in range(5)]
    train = [Example(i, f"t{i}", f"u{i}", i % 2) for i in range(7)]
    plan = SimpleNamespace(cfg=cfg, task=task, init=parse_init("first-k", 12, 3), dev=dev, pooling="cls")
    record = teacher.TeacherRecord("mpnet-base", "tkey0123", Path("/nonexistent"), {})
    enc = Encoded(train, [[1, 2, 3]] * 7, None, 0)
    p = {} if precision_ is None else {"precision": precision_}
    identity = runner.run_identity(plan, get_objective("kd"), record, 0, **p)
    return {"run_key": run_key(identity), "config_hash": stable_hash({k: v for k, v in identity.items() if k != "seed"}),
            "teacher_key": teacher.teacher_location(cfg, "mpnet-base", task, train, **p)[1],
            "cache_key": teacher_cache.cache_key("tkey0123", enc, "tkey0123:128", [1, 2, 3], ("hidden",), "fp32", **p),
            "logits_key": teacher.logits_key(enc, "tkey0123:128", 10, **p)}


def test_fp32_keys_are_unchanged_and_bf16_keys_differ(monkeypatch):
    assert _keys(monkeypatch, None) == GOLDEN
    assert _keys(monkeypatch, "fp32") == GOLDEN
    bf16 = _keys(monkeypatch, "bf16")
    assert all(bf16[k] != GOLDEN[k] for k in GOLDEN), bf16
    assert _keys(monkeypatch, "fp16")["run_key"] not in (GOLDEN["run_key"], bf16["run_key"])


def test_committed_rows_key_their_identity_and_name_only_non_fp32_precisions():
    """Every committed row's key is the key of its identity. Rows trained in fp32 (all those stored before precision
    was recorded among them) lack the precision entry, which fp32 leaves out; rows trained in bf16 or fp16 carry it."""
    stores = sorted(Path(__file__).resolve().parents[1].glob("reports/*/results.sqlite"))
    checked = 0
    for path in stores:
        store = ResultsStore(path)
        try:
            rows = [r for r in store.rows() if r.get("params")]
        finally:
            store.close()
        checked += len(rows)  # a store a suite has only begun may hold none yet
        for r in rows:
            assert r["params"].get("precision", "bf16") in ("bf16", "fp16"), (path, r["run_key"])
            assert run_key(r["params"]) == r["run_key"], (path, r["run_key"])
            assert ("precision" in r["params"]) == (r["extra"].get("precision", "fp32") != "fp32"), (path, r["run_key"])
    assert checked >= 18  # reports/p002-table1 alone holds 18 student rows


# --------------------------------------------------------------------------- cells and reports


def _row(objective: str, seed: int, score: float, precision_: str) -> dict:
    identity = {"task": "rte", "task_version": "1.0", "objective": objective, "objective_version": "1.0",
                "objective_params": {}, "init": "layers:1,2,3", "student": "mpnet-base[layers:1,2,3]",
                "student_weights": None, "teacher": "mpnet-base", "teacher_key": "rte-t", "hparams": {"epochs": 2.0},
                "dev": "rte-dev", "seed": seed, **precision.identity_part(precision_)}
    return {"run_key": run_key(identity), "kind": "student", "task": "rte", "objective": objective,
            "init": "layers:1,2,3", "teacher": "mpnet-base", "student": identity["student"], "seed": seed,
            "config_hash": stable_hash({k: v for k, v in identity.items() if k != "seed"}), "score": score,
            "teacher_score": 0.7, "params": identity,
            "extra": {"precision": precision_, "settings": precision.identity_part(precision_), "majority": 0.5}}


def test_two_precisions_are_two_cells_never_paired_and_never_in_one_table():
    from distilbench.report.build import with_checks
    from distilbench.report.tables import score_sections as _sections

    rows = [_row(o, s, 0.6 + 0.01 * s + (0.02 if o == "kd" else 0) + (0.005 if p == "bf16" else 0), p)
            for p in ("fp32", "bf16") for o in ("kd", "none") for s in (0, 1, 2)]
    cells = cells_from_rows(rows)
    assert len(cells) == 4
    assert sorted(c.label for c in cells) == ["kd [precision=bf16]", "kd [precision=fp32]",
                                               "none [precision=bf16]", "none [precision=fp32]"]
    assert len({c.config_hash for c in cells}) == 4 and len({c.setting for c in cells}) == 2
    pairs = {(c.a, c.b) for c in compare(cells, "objectives")}
    # kd and none are compared within each precision only: two families of one pair each
    assert pairs == {("none [precision=fp32]", "kd [precision=fp32]"), ("none [precision=bf16]", "kd [precision=bf16]")} \
        or pairs == {("kd [precision=fp32]", "none [precision=fp32]"), ("kd [precision=bf16]", "none [precision=bf16]")}
    sections = _sections(with_checks(cells, rows), {})
    assert [(key[4], sorted(c.label for c in members)) for key, members in sections] == [
        ("", ["kd [precision=fp32]", "none [precision=fp32]"]),
        ("bf16", ["kd [precision=bf16]", "none [precision=bf16]"])]
    # fp32 alone: no precision in labels or settings, as before precision was recorded
    fp32 = cells_from_rows([r for r in rows if r["extra"]["precision"] == "fp32"])
    assert sorted(c.label for c in fp32) == ["kd", "none"]
    assert all(c.settings == () for c in with_checks(fp32, rows))


# --------------------------------------------------------------------------- a real (tiny) run at bf16


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one precision per process (a singleton); this test needs another, then gives it back clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_a_bf16_run_records_its_precision_everywhere(tiny_teacher, glue_dir, tmp_path, fresh_accelerate_state):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = dict(teacher=str(tiny_teacher), task="rte", data_dir=str(glue_dir), max_train_examples=32, max_eval_examples=16,
                    epochs=1.0, teacher_epochs=1.0, batch_size=8, results=str(tmp_path / "results.sqlite"), progress=False,
                    baseline=False, seeds=1, workers="1")
        r = runner.Runner(RunConfig(**base, mixed_precision="bf16").validate())
        assert r.precision == "bf16" and r.accelerator.mixed_precision == "bf16"
        record, todo = r.pending()
        assert record.meta["identity"]["precision"] == "bf16"  # the teacher was fine-tuned at bf16: its own key
        assert [j.precision for j in r.jobs(todo, record, r.teacher_net(record))] == ["bf16"]  # workers get it
        (row,) = r.run()
    finally:
        torch.set_num_threads(old)
    assert row["params"]["precision"] == "bf16" and row["extra"]["precision"] == "bf16"
    assert row["extra"]["settings"]["precision"] == "bf16"
    fp32_identity = {k: v for k, v in row["params"].items() if k != "precision"}
    assert run_key(fp32_identity) != row["run_key"]  # an fp32 run of the same configuration is another row
    assert list(Path(record.path).glob("logits-*.pt"))  # the logits cache was built under this teacher


def test_a_worker_runs_at_the_precision_its_job_carries(monkeypatch):
    """Workers never resolve `auto` again: at their own thread count a probe could decide otherwise."""
    import queue

    from distilbench.training.runs import workers

    made = []

    class FakeRunner:
        def __init__(self, cfg, console=None, read_dev=True, precision=None):
            made.append(precision)
            self.plan = SimpleNamespace(objectives=["kd"])

        def teacher(self):
            return "record"

        def prepare_team(self):
            return []

        def teacher_net(self, record):
            return "net"

        def run_and_store(self, objective, seed, record, net, prefix=""):
            pass

    todo, results = queue.Queue(), queue.Queue()
    values = {"task": "rte", "workers": "1"}
    for k, p in enumerate(("bf16", "bf16", "fp32")):
        todo.put((k, workers.Job(values, 0, k, f"job {k}", p, FakeRunner)))  # the parent's runner class
    todo.put(None)
    old = torch.get_num_threads()
    try:
        workers._worker(0, todo, results, 1)
    finally:
        torch.set_num_threads(old)
    outcomes = [results.get_nowait() for _ in range(results.qsize())]
    assert [o[0] for o in outcomes if o[0] != "start"] == ["done"] * 3
    assert made == ["bf16", "fp32"]  # one runner per (configuration, precision), each at its job's precision

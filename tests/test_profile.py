"""Size, speed, retained share and training cost (``distilbench.training.runs.profile``, ``distilbench.training.teachers.cost``): computed on a tiny
model they equal hand computations, latency is measured once per architecture and read from its cache after, a run
stores all of it in its row (not in its identity), and shared costs are divided among the rows that used them.
No test asserts a speed: only that latencies exist, are positive, and that quantities derived from them are exact."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from distilbench.training.runs import profile as P
from distilbench.results.cost import training_costs
from distilbench.models.loading import cache_dir, load_classifier


@pytest.fixture
def tiny_model(tiny_teacher):
    return load_classifier(str(tiny_teacher), 2, False, attn_implementation=None)


def hand_counts(config, layers: int, labels: int = 2) -> tuple[int, int]:
    """BERT for sequence classification, counted from its config: (all, without the embedding tables)."""
    h, i = config.hidden_size, config.intermediate_size
    tables = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h  # q k v o, LayerNorm, FFN in and out, LayerNorm
    total = tables + 2 * h + layers * layer + (h * h + h) + (h * labels + labels)  # embedding LayerNorm, pooler, head
    return total, total - tables


def test_param_counts_equal_a_hand_sum(tiny_model):
    config = tiny_model.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (32, 4, 64)
    assert P.param_counts(tiny_model) == hand_counts(config, 4)
    # the same definition as transformers' own count
    assert P.param_counts(tiny_model)[1] == tiny_model.num_parameters(exclude_embeddings=True)


def test_size_is_the_safetensors_serialisation(tiny_model):
    from safetensors.torch import save

    expected = len(save({k: v.contiguous() for k, v in tiny_model.state_dict().items()}))
    assert P.serialized_bytes(tiny_model) == expected
    # float32 weights: 4 bytes per parameter, plus the header
    assert 0 < expected - 4 * P.param_counts(tiny_model)[0] < 16384


def test_a_tied_tensor_is_counted_and_saved_once():
    from safetensors.torch import save

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)
            self.b.weight = self.a.weight

    model = Tied()
    assert P.param_counts(model) == (12 + 4 + 4, 20)
    state = model.state_dict()
    assert P.serialized_bytes(model) == len(save({k: state[k].contiguous() for k in ("a.weight", "a.bias", "b.bias")}))


def test_latency_is_measured_once_then_read_from_the_cache(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "cache"))  # the session's cache holds other tests' profiles
    measured = P.model_profile(tiny_model, threads=1)
    cpu = measured["latency"]["cpu"]
    assert cpu["threads"] == 1 and cpu["seq_len"] == 128
    for b in (1, 32):
        run = cpu[f"b{b}"]
        assert run["ms"] > 0 and P.MIN_REPEATS <= run["runs"] <= P.REPEATS
        assert run["per_s"] == pytest.approx(b * 1000 / run["ms"], rel=1e-12)
    assert (measured["params"], measured["params_no_embeddings"]) == hand_counts(tiny_model.config, 4)
    assert measured["size_bytes"] == P.serialized_bytes(tiny_model)
    files = list((cache_dir() / "profiles").glob(f"{measured['arch']}-cpu-1t-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["latency"] == cpu

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(P, "measure", no_measuring)
    assert P.model_profile(tiny_model, threads=1) == measured
    # the weights do not matter, the architecture does; nor does the capturing attention an attention objective
    # switches its student to while it trains (it hands over to the default one)
    from distilbench.models.capture import prepare

    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(1.0)
    prepare(tiny_model)
    assert tiny_model.config._attn_implementation != measured["latency"]["cpu"]["attn_implementation"]
    assert P.model_profile(tiny_model, threads=1) == measured
    # another thread count or another architecture is another measurement
    assert P.model_profile(tiny_model, threads=3, measure_missing=False) is None
    from distilbench.models.inits import copy_layers

    student, _ = copy_layers(tiny_model, [1, 2], 0)
    assert P.arch_fingerprint(student) != measured["arch"]
    assert P.model_profile(student, threads=1, measure_missing=False) is None


def test_retained_share_and_ratios():
    assert P.retained(0.6, 0.8) == 0.6 / 0.8
    assert P.retained(2.0, 1.0, higher_is_better=False) == 0.5  # an error twice the teacher's keeps half
    assert P.retained(-0.1, 0.5) == -0.1 / 0.5  # a correlation below zero: a negative share
    assert P.retained(0.3, 0.0) is None and P.retained(0.3, -0.2) is None and P.retained(None, 0.5) is None
    student = {"size_bytes": 1000, "latency": {"cpu": {"b1": {"ms": 2.0}, "b32": {"ms": 10.0}}}}
    teacher = {"size_bytes": 4000, "latency": {"cpu": {"b1": {"ms": 6.0}, "b32": {"ms": 50.0}},
                                               "cuda": {"b1": {"ms": 1.0}, "b32": {"ms": 2.0}}}}
    assert P.ratios(student, teacher) == {"speedup": {"cpu": {"b1": 3.0, "b32": 5.0}}, "size_ratio": 4.0}


def _row(key: str, own: float, parts: list[tuple[str, float | None]]) -> dict:
    return {"run_key": key, "extra": {"profile": {"cost": {"own_s": own, "shared": [
        {"id": i, "kind": i.split(":")[0], "seconds": s} for i, s in parts]}}}}


def test_shared_costs_are_divided_among_the_rows_that_used_them():
    rows = [_row("a", 10.0, [("teacher:t", 120.0), ("logits:t/l", 6.0)]),
            _row("b", 20.0, [("teacher:t", 120.0), ("logits:t/l", 6.0), ("teacher:t", 120.0)]),  # listed twice: once
            _row("c", 30.0, [("teacher:t", 120.0), ("stage:t/s", 40.0)]),
            _row("d", 5.0, [("teacher:t", 120.0), ("stage:t/s", None)]),  # the stage's time, known from c
            _row("e", 7.0, [("outputs:t/o", None)]),  # never recorded: counted 0, marked incomplete
            {"run_key": "old", "extra": {}}]  # stored before costs were: not part of any division
    costs = training_costs(rows)
    assert set(costs) == {"a", "b", "c", "d", "e"}
    assert costs["a"].total_s == pytest.approx(10 + 120 / 4 + 6 / 2)
    assert costs["b"].total_s == pytest.approx(20 + 120 / 4 + 6 / 2)
    assert costs["c"].total_s == pytest.approx(30 + 120 / 4 + 40 / 2)
    assert costs["d"].total_s == pytest.approx(5 + 120 / 4 + 40 / 2) and costs["d"].complete
    assert costs["e"].total_s == 7.0 and not costs["e"].complete
    assert (costs["a"].own_s, costs["a"].shared_s) == (10.0, pytest.approx(33.0))
    # every second spent is accounted for exactly once
    assert sum(c.total_s for c in costs.values()) == pytest.approx(10 + 20 + 30 + 5 + 7 + 120 + 6 + 40)


# --------------------------------------------------------------------------- a run stores it


def test_a_run_stores_size_speed_retained_and_cost(tiny_run_args, tmp_path, monkeypatch):
    from distilbench.cli import main
    from distilbench.models.inits import copy_layers
    from distilbench.results.store import ResultsStore

    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "cache"))  # a fresh cache: the measurements happen here
    calls = []
    real = P.measure

    def counting(model, device, threads):
        calls.append((model.config.num_hidden_layers, device, threads))
        return real(model, device, threads)

    monkeypatch.setattr(P, "measure", counting)
    results = tmp_path / "results.sqlite"
    assert main(["run", "--objective", "kd", "--seeds", "2", *tiny_run_args[:-3], "--results", str(results),
                 "--no-progress"]) == 0
    threads = torch.get_num_threads()
    # once per architecture (teacher: 4 layers, student: 3), before the runs; the 4 runs read the cache
    assert sorted(calls) == [(3, "cpu", threads), (4, "cpu", threads)]
    with ResultsStore(results) as store:
        rows = store.rows()
    assert len(rows) == 4
    teacher_dir = next(p for p in (tmp_path / "cache" / "teachers").iterdir() if (p / "meta.json").exists())
    meta = json.loads((teacher_dir / "meta.json").read_text())
    net = load_classifier(str(teacher_dir), 2, False, attn_implementation=None)
    student, _ = copy_layers(net, [1, 2, 3], 0)
    for r in rows:
        prof = r["extra"]["profile"]
        assert "profile" not in r["params"]  # not part of the run's identity
        s, t = prof["student"], prof["teacher"]
        assert (s["params"], s["params_no_embeddings"]) == hand_counts(net.config, 3)
        assert s["params"] == r["extra"]["student_params"]
        assert (t["params"], t["params_no_embeddings"]) == hand_counts(net.config, 4)
        assert s["size_bytes"] == P.serialized_bytes(student) and t["size_bytes"] == P.serialized_bytes(net)
        for who in (s, t):
            assert who["latency"]["cpu"]["threads"] == threads
            assert who["latency"]["cpu"]["b1"]["ms"] > 0 and who["latency"]["cpu"]["b32"]["ms"] > 0
        for b in ("b1", "b32"):
            assert prof["speedup"]["cpu"][b] == t["latency"]["cpu"][b]["ms"] / s["latency"]["cpu"][b]["ms"]
        assert prof["size_ratio"] == t["size_bytes"] / s["size_bytes"]
        assert prof["retained"] == r["score"] / r["teacher_score"]
        cost = prof["cost"]
        assert 0 < cost["own_s"] <= r["wall_time_s"]
        kinds = {p["kind"]: p for p in cost["shared"]}
        assert kinds["teacher"]["id"] == f"teacher:{teacher_dir.name}"
        assert kinds["teacher"]["seconds"] == meta["train_time_s"] > 0
        if r["objective"] == "kd":  # reads the teacher's cached logits; their computing time is stored beside them
            logits = kinds["logits"]
            assert logits["id"].startswith(f"logits:{teacher_dir.name}/logits-") and logits["seconds"] > 0
            assert json.loads((teacher_dir / Path(logits["id"].split("/")[-1]).with_suffix(".json").name)
                              .read_text())["seconds"] == logits["seconds"]
        else:  # `none` reads nothing from the teacher, but its student was copied from it
            assert set(kinds) == {"teacher"}


def test_ted_stage_one_is_a_shared_part_of_both_seeds(tiny_run_args, tmp_path):
    from distilbench.cli import main
    from distilbench.results.store import ResultsStore

    assert main(["run", "--objective", "ted", "--seeds", "2", "--no-baseline", "--init", "layers:1,3", *tiny_run_args]) == 0
    with ResultsStore(tmp_path / "results.sqlite") as store:
        rows = {r["seed"]: r for r in store.rows(objective="ted")}
    stages = {s: [p for p in r["extra"]["profile"]["cost"]["shared"] if p["kind"] == "stage"] for s, r in rows.items()}
    assert len(stages[0]) == 1 and stages[0] == stages[1]  # one Stage I, the same part in both rows
    # seed 0 trained it (sequential runs: the first seed builds it); its time is the part's, not seed 0's own
    trained = rows[0]["extra"]["stage_times_s"]["filters"]
    assert stages[0][0]["seconds"] == trained > 0
    assert rows[0]["extra"]["profile"]["cost"]["own_s"] == pytest.approx(rows[0]["wall_time_s"] - trained, rel=1e-9)
    assert "filters" not in rows[1]["extra"]["stage_times_s"]  # seed 1 read it
    assert rows[1]["extra"]["profile"]["cost"]["own_s"] == rows[1]["wall_time_s"]
    # TED reads the teacher's hidden states from the teacher-output cache: its build time is a part too
    outputs = [p for p in rows[0]["extra"]["profile"]["cost"]["shared"] if p["kind"] == "outputs"]
    assert len(outputs) == 1 and outputs[0]["seconds"] > 0


def test_a_team_run_counts_each_teacher_once(tiny_run_args, tiny_teacher, tmp_path):
    from tiny import tiny_bert

    from distilbench.cli import main
    from distilbench.results.store import ResultsStore

    small = tiny_bert(tmp_path / "tiny-bert-small", layers=2, hidden=16, heads=2, seed=1)
    assert main(["run", "--objective", "skd", "--teachers", f"{tiny_teacher},{small}", "--no-baseline", *tiny_run_args]) == 0
    with ResultsStore(tmp_path / "results.sqlite") as store:
        (row,) = store.rows()
    shared = row["extra"]["profile"]["cost"]["shared"]
    teachers = sorted(p["id"].rsplit("-", 1)[0] for p in shared if p["kind"] == "teacher")  # the folder less its key
    assert teachers == ["teacher:rte-tiny-bert", "teacher:rte-tiny-bert-small"]  # the main teacher is the first member
    assert len({p["id"] for p in shared}) == len(shared) == 4  # two teachers, the logits of each
    assert all(p["seconds"] > 0 for p in shared)


def test_workers_read_what_the_calling_process_measured(tiny_run_args, tmp_path, monkeypatch):
    """--workers 2: latency is measured in the calling process with the workers' thread count before they start;
    a worker that measured instead would have to write another profile file (its key names arch and threads)."""
    from distilbench.cli import main
    from distilbench.results.store import ResultsStore
    from distilbench.training.runs.workers import resolve

    monkeypatch.setenv("DISTILBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--objective", "kd", "--seeds", "2", "--workers", "2", *tiny_run_args]) == 0
    threads = resolve("2", 4)[1]
    files = sorted((tmp_path / "cache" / "profiles").glob("*.json"))
    assert len(files) == 2 and all(f"-cpu-{threads}t-" in f.name for f in files)  # teacher and student, once each
    measured = {json.loads(f.read_text())["arch"]: json.loads(f.read_text())["latency"] for f in files}  # one device each
    with ResultsStore(tmp_path / "results.sqlite") as store:
        rows = store.rows()
    assert len(rows) == 4
    for r in rows:
        for who in ("student", "teacher"):
            stored = r["extra"]["profile"][who]
            assert stored["latency"]["cpu"] == measured[stored["arch"]] and stored["latency"]["cpu"]["threads"] == threads


def test_a_failed_measurement_costs_the_row_its_profile_not_the_run(tiny_model, monkeypatch):
    """pair_profiles: when measuring raises (out of memory, an unwritable cache), both profiles are None and one line
    says why; the run's row then reads n/a in those columns instead of the finished run being lost."""
    said = []
    assert P.pair_profiles(tiny_model, tiny_model, 1, said.append)[0]["params"] == P.param_counts(tiny_model)[0]

    def fail(model, threads, measure_missing=True):
        raise OSError("cache not writable")

    monkeypatch.setattr(P, "model_profile", fail)
    assert P.pair_profiles(tiny_model, tiny_model, 1, said.append) == [None, None]
    assert said == ["[bold red]size and speed not measured: OSError: cache not writable[/]"]

"""The report's size/speed/cost table, its cells.csv columns and its Pareto plots (``distilbench.report.leaderboard``), on
hand-made rows with stored profiles beside rows stored before profiles were (which read n/a): every number equals a
hand computation, the plotted points equal cells.csv, and the report rebuilds byte for byte."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from distilbench.report.leaderboard import pareto_front
from distilbench.training.runs.profile import row_profile
from distilbench.report.build import CELLS_HEADER, build_report
from distilbench.results.store import ResultsStore
from rows import student_row

LABELS = [0, 1] * 10
TEACHER_SCORE = 0.7  # student_row's
CORRECT = {("kd", 0): 13, ("kd", 1): 12, ("none", 0): 11, ("none", 1): 10, ("att-kl", 0): 12, ("att-kl", 1): 11}
OWN = {("kd", 0): 100.0, ("kd", 1): 110.0, ("none", 0): 60.0, ("none", 1): 70.0}
TEACHER_ID = "teacher:rte-mpnet-base-rte-t"  # the teacher's folder ends with its key, rte-t
STUDENT = {"arch": "s", "params": 20_000_000, "params_no_embeddings": 5_000_000, "size_bytes": 80_000_000,
           "latency": {"cpu": {"threads": 2, "seq_len": 128, "device_name": "Test CPU",
                               "b1": {"ms": 10.0, "per_s": 100.0, "runs": 5}, "b32": {"ms": 200.0, "per_s": 160.0, "runs": 5}}}}
TEACHER = {"arch": "t", "params": 110_000_000, "params_no_embeddings": 85_000_000, "size_bytes": 440_000_000,
           "latency": {"cpu": {"threads": 2, "seq_len": 128, "device_name": "Test CPU",
                               "b1": {"ms": 40.0, "per_s": 25.0, "runs": 5}, "b32": {"ms": 1000.0, "per_s": 32.0, "runs": 5}}}}


def hand_rows() -> list[dict]:
    rows = []
    for (objective, seed), right in CORRECT.items():
        preds = [y if k < right else 1 - y for k, y in enumerate(LABELS)]
        extra = {"majority": 0.5, "teacher_key": "rte-t"}
        if (objective, seed) in OWN:  # att-kl: stored before rows carried a profile
            shared = [{"id": TEACHER_ID, "kind": "teacher", "seconds": 400.0}]
            if objective == "kd":
                shared.append({"id": "logits:rte-mpnet-base-rte-t/logits-x.pt", "kind": "logits", "seconds": 20.0})
            extra["profile"] = row_profile(STUDENT, TEACHER, right / 20, TEACHER_SCORE, True,
                                           {"own_s": OWN[(objective, seed)], "shared": shared})
        rows.append(student_row(objective, seed, preds, LABELS, extra, {"epochs": 2.0}))
    return rows


@pytest.fixture
def stored(tmp_path) -> Path:
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        for r in hand_rows():
            assert store.put(r)
    return path


def build(rows, out: Path):
    return build_report(rows, out, command="distilbench report", results="results.sqlite")


def read_cells(out: Path) -> dict[str, dict]:
    with (out / "cells.csv").open(newline="", encoding="utf-8") as f:
        return {r["objective"]: r for r in csv.DictReader(f)}


def test_cells_csv_holds_size_speed_retained_and_cost(stored, tmp_path):
    with ResultsStore(stored) as store:
        rows = store.rows()
    build(rows, tmp_path / "r")
    with (tmp_path / "r" / "cells.csv").open(encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    assert header[:len(CELLS_HEADER)] == CELLS_HEADER  # the old columns keep their place; the new ones follow
    cells = read_cells(tmp_path / "r")
    kd, none, old = cells["kd"], cells["none"], cells["att-kl"]
    assert (kd["params"], kd["params_no_embeddings"], kd["size_bytes"]) == ("20000000", "5000000", "80000000")
    assert (float(kd["latency_b1_ms"]), float(kd["latency_b32_ms"])) == (10.0, 200.0)
    assert (float(kd["throughput_b1"]), float(kd["throughput_b32"])) == (100.0, 160.0)
    assert (float(kd["speedup_b1"]), float(kd["speedup_b32"]), float(kd["size_ratio"])) == (4.0, 5.0, 5.5)
    assert kd["gpu_latency_b1_ms"] == "" and kd["gpu_speedup_b32"] == ""  # no GPU measured
    # retained: the mean over seeds of score / teacher score, in %
    assert float(kd["retained_pct"]) == pytest.approx(100 * (13 / 20 + 12 / 20) / 2 / TEACHER_SCORE, abs=1e-4)
    assert float(none["retained_pct"]) == pytest.approx(100 * (11 / 20 + 10 / 20) / 2 / TEACHER_SCORE, abs=1e-4)
    # training cost per run: own time, plus the teacher's 400 s shared by the 4 profiled runs, plus the logits'
    # 20 s shared by the 2 kd runs; the att-kl runs stored no cost and take no share
    assert float(kd["train_cost_s"]) == pytest.approx((100 + 110) / 2 + 400 / 4 + 20 / 2, abs=1e-4)
    assert float(none["train_cost_s"]) == pytest.approx((60 + 70) / 2 + 400 / 4, abs=1e-4)
    assert (float(kd["train_own_s"]), float(kd["train_shared_s"])) == (105.0, 110.0)
    assert kd["train_cost_complete"] == "true" and kd["profile_runs"] == "2"
    assert (kd["profile_threads"], kd["profile_cpu"]) == ("2", "Test CPU")
    # rows stored before profiles were: every new column empty, none of them a crash
    assert old["profile_runs"] == "0"
    assert all(old[k] == "" for k in header[len(CELLS_HEADER):] if k != "profile_runs")


def test_size_table_reads_na_for_old_rows(stored, tmp_path):
    with ResultsStore(stored) as store:
        build(store.rows(), tmp_path / "r")
    text = (tmp_path / "r" / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    kd = next(line for line in lines if line.startswith("| kd | rte |"))
    assert kd.split(" | ")[2:5] == ["20.00", "5.00", "80.0"]  # M params, M without embeddings, MB
    assert "| 4.00 | 5.00 | 5.50 | 89.3 | 215 |" in kd  # speed-ups, size ratio, retained, cost per run
    old = next(line for line in lines if line.startswith("| att-kl | rte |"))
    assert set(old.strip("| ").split(" | ")[2:]) == {"n/a"}
    teacher = next(line for line in lines if line.startswith("| teacher | rte |"))
    assert teacher.endswith("| 1.00 | 100.0 | 400 |")  # its whole fine-tuning
    assert "n/a: stored before runs recorded their size, speed and cost (att-kl)." in text
    assert "Measured on: Test CPU, 2 threads." in text


def test_pareto_points_equal_cells_csv(stored, tmp_path):
    with ResultsStore(stored) as store:
        report = build(store.rows(), tmp_path / "r")
    cells = read_cells(tmp_path / "r")
    assert sorted(report.pareto) == ["pareto-cost-rte.png", "pareto-latency-rte.png"]
    for name, column in (("pareto-latency-rte.png", "latency_b1_ms"), ("pareto-cost-rte.png", "train_cost_s")):
        assert (tmp_path / "r" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        points = {q.label: q for q in report.pareto[name]}
        assert set(points) == {"kd", "none", "teacher mpnet-base"}  # att-kl has no profile: not plotted
        for label in ("kd", "none"):
            assert points[label].x == pytest.approx(float(cells[label][column]), abs=1e-4)
            assert points[label].y == pytest.approx(float(cells[label]["mean"]), abs=1e-4)
        assert points["teacher mpnet-base"].y == pytest.approx(100 * TEACHER_SCORE)
    latency = {q.label: q for q in report.pareto["pareto-latency-rte.png"]}
    assert latency["teacher mpnet-base"].x == 40.0
    # kd and none run equally fast, kd scores higher: none is dominated; the teacher is slower and better
    assert {k for k, q in latency.items() if q.front} == {"kd", "teacher mpnet-base"}
    cost = {q.label: q for q in report.pareto["pareto-cost-rte.png"]}
    assert cost["teacher mpnet-base"].x == 400.0
    assert all(q.front for q in cost.values())  # each is cheaper or better than the others


def test_pareto_front():
    assert pareto_front([(1, 50), (2, 60), (2, 55), (3, 60), (1, 50)]) == [True, True, False, False, True]
    assert pareto_front([(1, 0.5), (2, 0.3), (3, 0.4)], higher_is_better=False) == [True, True, False]


def test_rebuild_is_identical_and_dataframes_give_the_same(stored, tmp_path):
    with ResultsStore(stored) as store:
        rows, frame = store.rows(), store.dataframe()
    build(rows, tmp_path / "a")
    build(list(reversed(rows)), tmp_path / "b")
    build(frame, tmp_path / "c")  # a missing profile is NaN in a dataframe
    for name in ("cells.csv", "pareto-latency-rte.png", "pareto-cost-rte.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_pareto_labels_of_close_points_do_not_overlap_and_stay_inside_on_the_right():
    """Two cells with almost the same latency and score get labels on different lines; the rightmost point's label
    goes to its left (it would leave the figure on the right)."""
    from distilbench.report.leaderboard import LABEL_PT, label_offsets
    from distilbench.report.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    spots = {(10.0, 50.0): "kd · 1,8,12", (10.5, 50.2): "hid-cls · 1,8,12", (60.0, 20.0): "none", (98.0, 90.0): "teacher"}
    out = label_offsets(ax, spots)
    plt.close(fig)
    (_, low, ha_low), (_, high, ha_high) = out[(10.0, 50.0)], out[(10.5, 50.2)]
    assert ha_low == ha_high == "left" and high - low >= LABEL_PT  # moved up at least one line
    assert out[(60.0, 20.0)] == (4.0, 3.0, "left")  # alone: the default place
    assert out[(98.0, 90.0)][0] < 0 and out[(98.0, 90.0)][2] == "right"


def test_a_perplexity_axis_is_not_labelled_times_100():
    """Scores of a lower-is-better task are plotted in their own units, and the axis says so."""
    from types import SimpleNamespace

    from distilbench.report.format import score_axis

    assert score_axis(SimpleNamespace(main_score="perplexity", higher_is_better=False)) == "perplexity"
    assert score_axis(SimpleNamespace(main_score="f1", higher_is_better=True)) == "f1 × 100"

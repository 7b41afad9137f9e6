"""The signal check (distilbench.results.chance): at-chance cells are marked and never ranked; the detectable difference."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from distilbench.results.chance import check, check_rows, detectable_difference, example_test, pooled_sd, seed_test
from distilbench.report.build import build_report
from rows import student_row

N = 200
LABELS = [int(x) for x in (np.random.default_rng(3).random(N) < 0.55)]  # class 1 is the majority (~55%)


def _preds(right: float, seed: int) -> list[int]:
    """Predictions that are right with probability ``right``; at 0 they are the majority class everywhere."""
    rng = np.random.default_rng(100 + seed)
    if right == 0:
        return [1] * N
    return [y if rng.random() < right else 1 - y for y in LABELS]


def _rows(objectives=(("none", 0.0), ("kd", 0.9)), seeds=(0, 1, 2), predictions=True) -> list[dict]:
    rows = []
    for objective, right in objectives:
        for seed in seeds:
            preds = _preds(right, seed)
            extra = {"majority": max(np.mean(LABELS), 1 - np.mean(LABELS)),
                     "settings": {"epochs": 1.0, "max_train_examples": 64}}
            if predictions:
                extra |= {"dev_predictions": preds, "dev_labels": LABELS}
            rows.append(student_row(objective, seed, preds, LABELS, extra, {"epochs": 1.0, "max_train_examples": 64}))
    return rows


MAJORITY = 100 * max(np.mean(LABELS), 1 - np.mean(LABELS))


def test_a_majority_cell_is_at_chance_and_a_clearly_better_one_is_not():
    rows = _rows()
    none = check_rows([r for r in rows if r["objective"] == "none"])
    kd = check_rows([r for r in rows if r["objective"] == "kd"])
    assert none.majority == pytest.approx(MAJORITY) and none.mean == pytest.approx(MAJORITY)
    assert none.at_chance is True and none.unranked and none.example_p == 1.0 and none.seed_p == 1.0
    assert kd.at_chance is False and not kd.unranked
    assert kd.seed_p < 0.01 and kd.example_p == pytest.approx(1 / 2001)  # no resample reaches 2δ
    # without predictions the seeds alone decide; with one seed and no predictions nothing can be said
    assert check_rows([r for r in _rows(predictions=False) if r["objective"] == "kd"]).at_chance is False
    lone = check_rows([r for r in _rows(seeds=(0,), predictions=False) if r["objective"] == "kd"])
    assert lone.at_chance is None and lone.unranked and "cannot be checked" in lone.reason
    # regression has no majority class: the check does not apply and never blocks ranking
    reg = check({0: 80.0, 1: 81.0}, None)
    assert not reg.applies and not reg.unranked


def test_seed_test_is_scipys_one_sided_t():
    from scipy import stats

    scores, floor = [55.0, 57.5, 53.0], 52.7
    assert seed_test(scores, floor) == pytest.approx(stats.ttest_1samp(np.array(scores) - floor, 0).pvalue / 2)
    assert seed_test([50.0, 51.0], 52.7) > 0.5  # below the floor
    assert seed_test([60.0, 60.0], 52.7) == 0.0 and seed_test([52.7, 52.7], 52.7) == 1.0
    assert math.isnan(seed_test([60.0], 52.7))


def test_example_test_against_a_loop_written_out():
    """The bootstrap by hand: the same generator draws, accuracy per resample for each seed and for the majority
    predictor, one-sided centred p."""
    preds = {s: _preds(0.58, s) for s in (0, 1)}
    delta, p = example_test(preds, LABELS, ["accuracy"], "accuracy", samples=300, seed=7)
    y = np.array(LABELS)
    maj = np.full(N, 1)
    want = 100 * np.mean([np.mean(np.array(preds[s]) == y) - np.mean(maj == y) for s in (0, 1)])
    assert delta == pytest.approx(want, abs=1e-9)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, N, size=(300, N))
    stats = [100 * np.mean([np.mean(np.array(preds[s])[i] == y[i]) - np.mean(maj[i] == y[i]) for s in (0, 1)])
             for i in idx]
    hand = (1 + sum(round(x - want, 10) >= round(want, 10) for x in stats)) / 301
    assert p == pytest.approx(hand)


def test_detectable_difference_matches_a_hand_computation():
    # n = 3 seeds, sd of the paired differences 2.0: t(0.975, 2) = 4.302653, t(0.8, 2) = 1.060660 (tables)
    assert detectable_difference(2.0, 3) == pytest.approx((4.302653 + 1.060660) * 2.0 / math.sqrt(3), rel=1e-6)
    # n = 5, sd 1.0: t(0.975, 4) = 2.776445, t(0.8, 4) = 0.940965
    assert detectable_difference(1.0, 5) == pytest.approx((2.776445 + 0.940965) / math.sqrt(5), rel=1e-6)
    assert math.isnan(detectable_difference(1.0, 1))
    # pooled over pairs: the root mean of the variances (1 and 4 -> sqrt(2.5))
    assert pooled_sd([[1.0, 2.0, 3.0], [0.0, 2.0, 4.0]]) == pytest.approx(math.sqrt(2.5))


def test_report_marks_at_chance_never_bolds_it_and_states_what_it_could_detect(tmp_path):
    rows = _rows((("none", 0.0), ("kd", 0.0), ("att-kl", 0.9)))
    report = build_report(rows, tmp_path / "r", command="x", results="r.sqlite")
    grid = report.tables[0]
    names = [r[0] for r in grid.rows]
    assert names[-2:] == ["teacher", "majority class"]
    for name in ("none", "kd"):
        r = names.index(name)
        assert grid.rows[r][1].endswith("(at chance)") and (r, 1) not in grid.bold and (r, 2) not in grid.bold
    a = names.index("att-kl")
    assert "(at chance)" not in grid.rows[a][1] and (a, 1) in grid.bold
    assert grid.rows[-1][1] == f"{MAJORITY:.1f}"
    readme = (tmp_path / "r" / "README.md").read_text(encoding="utf-8")
    assert "epochs=1.0, max_train_examples=64" in readme and "epochs=1.0, max_train_examples=64" in grid.title
    assert "rte: 2 of 3 cells at chance (not ranked): kd, none." in readme
    assert "Smallest detectable paired difference: **" in readme
    with (tmp_path / "r" / "cells.csv").open(newline="", encoding="utf-8") as f:
        got = {r["objective"]: r for r in csv.DictReader(f)}
    assert got["none"]["at_chance"] == "true" and got["att-kl"]["at_chance"] == "false"
    assert float(got["none"]["majority"]) == pytest.approx(MAJORITY, abs=1e-4)


def test_report_says_nothing_can_be_ranked_when_every_cell_is_at_chance(tmp_path):
    rows = _rows((("none", 0.0), ("kd", 0.0)))
    report = build_report(rows, tmp_path / "r", command="x", results="r.sqlite")
    assert not report.tables[0].bold
    readme = (tmp_path / "r" / "README.md").read_text(encoding="utf-8")
    assert "rte: every student cell is at chance: no objective can be ranked on this task at this size." in readme


def test_a_cut_dev_set_gets_its_own_table(tmp_path):
    rows = _rows((("none", 0.0), ("kd", 0.9)))
    for r in rows:
        if r["objective"] == "kd":
            r["extra"]["settings"] = {**r["extra"]["settings"], "max_eval_examples": 100}
            r["params"] = {**r["params"], "dev": "rte-dev-100"}
            r["config_hash"] = r["config_hash"][::-1]
    report = build_report(rows, tmp_path / "r", command="x", results="r.sqlite")
    firsts = [[row[0] for row in g.rows if row[0] not in ("teacher", "majority class")] for g in report.tables]
    assert sorted(firsts) == [["kd"], ["none"]]
    assert any("max_eval_examples=100" in g.title for g in report.tables)


def test_a_tiny_run_prints_the_at_chance_warning(tiny_run_args, capsys):
    """A 4-layer 32-wide random teacher on 48 RTE examples cannot beat the majority class: run's table says so."""
    from distilbench.cli import main

    assert main(["run", "--objective", "kd", "--seeds", "2", *tiny_run_args]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "majority class" in out
    assert "at chance: every objective is not significantly above the majority class" in out
    assert "no objective can be ranked on this task at this size" in out
    assert "max_eval_examples=24" in out and "max_train_examples=48" in out

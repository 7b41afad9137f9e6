"""Per-example paired tests (distilbench.results.per_example): McNemar and the paired bootstrap recomputed by hand, the
vectorised metrics against the plain ones, refusals, and the report's --per-example section."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from distilbench.cli import main
from distilbench.data.metrics import compute_metrics
from distilbench.results.per_example import batched_score, mcnemar, per_example_test
from distilbench.report.build import build_report
from distilbench.results.store import ResultsStore
from distilbench.data.tasks import get_task
from rows import student_row


def test_mcnemar_by_hand():
    labels = np.array([1] * 20)
    a = labels.copy()
    b = labels.copy()
    b[:7] = 0  # only a right on 7
    a[7] = 0  # only b right on 1
    a[8:10] = 0
    b[8:10] = 0  # both wrong on 2: not discordant
    n01, n10, p = mcnemar(a, b, labels)
    # exact two-sided binomial: 2 * P(X <= 1), X ~ Bin(8, 1/2) = 2 * (1 + 8) / 256
    assert (n01, n10) == (7, 1) and p == pytest.approx(18 / 256)
    assert mcnemar(a, a, labels) == (0, 0, 1.0)
    assert mcnemar(b, a, labels)[:2] == (1, 7) and mcnemar(b, a, labels)[2] == pytest.approx(18 / 256)


@pytest.mark.parametrize("task", ["rte", "mrpc", "cola", "stsb"])
def test_batched_score_equals_compute_metrics(task):
    t = get_task(task)
    rng = np.random.default_rng(1)
    n = 40
    if t.regression:
        y = rng.uniform(0, 5, n).round(1)
        p = (y + rng.normal(0, 1.5, n)).round(3)
    else:
        y = rng.integers(0, 2, n)
        p = np.where(rng.random(n) < 0.7, y, 1 - y)
    idx = rng.integers(0, n, size=(25, n))
    idx[0] = 0  # a constant resample: the metrics' degenerate cases
    got = batched_score(t.metrics, t.main_score, p[idx], y[idx])
    want = [compute_metrics(t, p[i], y[i])["score"] for i in idx]
    assert got == pytest.approx(want, abs=1e-12)


def _by_hand(a, b, labels, task, samples, seed=0):
    """The paired bootstrap written out: one loop per resample, compute_metrics per seed and side."""
    t = get_task(task)
    y = np.asarray(labels)
    n = len(y)
    seeds = sorted(a)

    def delta(idx):
        return 100 * np.mean([compute_metrics(t, np.asarray(a[s])[idx], y[idx])["score"]
                              - compute_metrics(t, np.asarray(b[s])[idx], y[idx])["score"] for s in seeds])

    observed = delta(np.arange(n))
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    stats = np.array([delta(i) for i in draws])
    extreme = sum(abs(x - observed) >= abs(observed) - 1e-9 for x in stats)
    return observed, np.percentile(stats, [2.5, 97.5]), (1 + extreme) / (samples + 1)


@pytest.mark.parametrize("task", ["rte", "mrpc"])
def test_bootstrap_equals_the_loop_by_hand(task):
    rng = np.random.default_rng(7)
    n = 60
    labels = rng.integers(0, 2, n)
    a = {s: np.where(rng.random(n) < 0.75, labels, 1 - labels).tolist() for s in (0, 1, 2)}
    b = {s: np.where(rng.random(n) < 0.65, labels, 1 - labels).tolist() for s in (0, 1, 2)}
    t = get_task(task)
    r = per_example_test(a, b, labels.tolist(), t.metrics, t.main_score, samples=300)
    observed, (low, high), p = _by_hand(a, b, labels, task, 300)
    assert r.seeds == (0, 1, 2) and r.n_examples == n
    assert r.diff == pytest.approx(observed, abs=1e-9) and r.diff > 0
    assert (r.ci_low, r.ci_high) == pytest.approx((low, high), abs=1e-9)
    assert r.bootstrap_p == pytest.approx(p)
    # McNemar per seed on the same predictions
    assert [m[0] for m in r.mcnemar] == [0, 1, 2]
    for s, n01, n10, pm in r.mcnemar:
        assert (n01, n10, pm) == mcnemar(np.array(a[s]), np.array(b[s]), labels)


def test_bootstrap_extremes_and_symmetry():
    labels = [0, 1] * 25
    right = {0: labels, 1: labels}
    wrong = {0: [1 - y for y in labels], 1: [1 - y for y in labels]}
    t = get_task("rte")
    best = per_example_test(right, wrong, labels, t.metrics, t.main_score, samples=200)
    assert best.diff == 100.0 and best.ci_low == best.ci_high == 100.0
    assert best.bootstrap_p == pytest.approx(1 / 201)  # no resample is as far from 100 as 0 is: the smallest p
    assert [(n01, n10) for _, n01, n10, _ in best.mcnemar] == [(50, 0), (50, 0)]
    same = per_example_test(right, right, labels, t.metrics, t.main_score, samples=200)
    assert same.diff == 0.0 and same.bootstrap_p == 1.0 and all(p == 1.0 for *_, p in same.mcnemar)
    rng = np.random.default_rng(3)
    a = {0: rng.integers(0, 2, 50).tolist()}
    b = {0: rng.integers(0, 2, 50).tolist()}
    ab, ba = (per_example_test(x, y, labels, t.metrics, t.main_score, samples=200) for x, y in ((a, b), (b, a)))
    assert ab.diff == -ba.diff and ab.bootstrap_p == ba.bootstrap_p
    assert (ab.ci_low, ab.ci_high) == pytest.approx((-ba.ci_high, -ba.ci_low))


def test_regression_has_no_mcnemar_and_refusals():
    t = get_task("stsb")
    labels = [0.5, 1.0, 2.5, 3.0, 4.5, 5.0]
    a = {0: [0.6, 1.1, 2.0, 3.2, 4.0, 4.9], 1: [0.4, 1.5, 2.6, 2.9, 4.4, 5.0]}
    b = {0: [2.0, 1.0, 3.0, 2.0, 3.0, 4.0], 1: [1.0, 2.0, 2.0, 3.0, 3.5, 4.0]}
    r = per_example_test(a, b, labels, t.metrics, t.main_score, samples=100)
    assert r.mcnemar == () and r.diff > 0 and not math.isnan(r.bootstrap_p)
    mismatched = per_example_test(a, {0: b[0]}, labels, t.metrics, t.main_score)
    assert mismatched.mismatched_seeds and math.isnan(mismatched.diff) and "seeds differ" in mismatched.reason
    short = per_example_test({0: [1, 0]}, {0: [1, 0, 1]}, [1, 0, 1], ["accuracy"], "accuracy")
    assert math.isnan(short.bootstrap_p) and "length" in short.reason
    ragged = per_example_test({0: [1, 0, 1], 1: [1, 0]}, {0: [1, 0, 1], 1: [1, 0, 1]}, [1, 0, 1], ["accuracy"], "accuracy")
    assert math.isnan(ragged.diff) and "predictions: [2, 3]" in ragged.reason
    with pytest.raises(ValueError, match="at least 1"):
        per_example_test({0: [1]}, {0: [0]}, [1], ["accuracy"], "accuracy", samples=0)


# --------------------------------------------------------------------------- in the report

LABELS = [int(x) for x in np.random.default_rng(11).integers(0, 2, 80)]


def _rows(with_predictions=True) -> list[dict]:
    rng = np.random.default_rng(5)
    rows = []
    for objective, right in (("none", 0.6), ("kd", 0.8), ("att-kl", 0.62)):
        for seed in (0, 1, 2):
            preds = [y if rng.random() < right else 1 - y for y in LABELS]
            extra = {"dev_predictions": preds, "dev_labels": LABELS} if with_predictions else {}
            if objective == "att-kl" and seed == 2 and with_predictions:
                extra = {}  # one row from before predictions were kept: its pairs are n/a
            rows.append(student_row(objective, seed, preds, LABELS, extra, {"epochs": 1.0}))
    return rows


def test_report_per_example_section_and_csv(tmp_path):
    rows = _rows()
    build_report(rows, tmp_path / "r", command="x", results="r.sqlite", per_example=300)
    readme = (tmp_path / "r" / "README.md").read_text(encoding="utf-8")
    assert "### 3.3 Per-example tests on the dev predictions" in readme and "300 resamples" in readme
    with (tmp_path / "r" / "per_example.csv").open(newline="", encoding="utf-8") as f:
        got = {(r["a"], r["b"]): r for r in csv.DictReader(f)}
    assert sorted(got) == [("kd", "att-kl"), ("none", "att-kl"), ("none", "kd")]
    for pair in (("kd", "att-kl"), ("none", "att-kl")):
        assert got[pair]["boot_p"] == "" and "no per-example predictions" in got[pair]["note"]
    # the one testable pair: the numbers of per_example_test on the rows' predictions; Holm over a family of one
    preds = {o: {r["seed"]: r["extra"]["dev_predictions"] for r in rows if r["objective"] == o} for o in ("none", "kd")}
    t = get_task("rte")
    direct = per_example_test(preds["none"], preds["kd"], LABELS, t.metrics, t.main_score, samples=300)
    row = got[("none", "kd")]
    assert float(row["diff"]) == pytest.approx(direct.diff, abs=1e-4) and direct.diff < 0
    assert float(row["boot_p"]) == pytest.approx(direct.bootstrap_p, rel=1e-5)
    assert float(row["holm_p"]) == pytest.approx(direct.bootstrap_p, rel=1e-5)
    assert row["seeds"] == "0 1 2" and row["n_examples"] == "80"
    assert row["mcnemar"] == " ".join(f"{s}:{a}/{b}:{p:.6g}" for s, a, b, p in direct.mcnemar)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["per_example"] == 300
    # the CLI's default (kept in cli/report.py so that building the parser imports no numpy) is the module's
    from distilbench.results import per_example
    from distilbench.cli import report
    assert report.BOOTSTRAP_SAMPLES == per_example.BOOTSTRAP_SAMPLES


def test_init_pairs_get_per_example_tests_after_the_objective_pairs(tmp_path):
    """Paper 002 Table 3's claims compare one objective from two student inits: those pairs get the bootstrap too
    (paired by seed and dev example), Holm within their own family, listed after the objective families."""
    rng = np.random.default_rng(7)
    rows = []
    for init, right in (("layers:1,2,3", 0.85), ("layers:4,8,12", 0.6)):
        for objective in ("none", "kd"):
            for seed in (0, 1, 2):
                preds = [y if rng.random() < right else 1 - y for y in LABELS]
                r = student_row(objective, seed, preds, LABELS, {"dev_predictions": preds, "dev_labels": LABELS},
                                {"epochs": 1.0})
                student = f"mpnet-base[{init}]"
                r.update(init=init, student=student, config_hash=f"{objective}-{init}",
                         params={**r["params"], "init": init, "student": student})
                rows.append(r)
    report = build_report(rows, tmp_path / "r", command="x", per_example=200)
    families = list(dict.fromkeys(ex.family for ex in report.example_comparisons))
    assert len(families) == 4 and all("init layers:" in f for f in families[:2])  # objective families first
    inits = [ex for ex in report.example_comparisons if "init layers:" not in ex.family]
    assert sorted((ex.a, ex.b) for ex in inits) == [("layers:1,2,3", "layers:4,8,12")] * 2
    for ex in inits:  # the numbers of per_example_test on the two cells' predictions; a family of one pair
        objective = "kd" if "| kd |" in ex.family else "none"
        side = {i: {r["seed"]: r["extra"]["dev_predictions"] for r in rows
                    if r["objective"] == objective and r["init"] == i} for i in (ex.a, ex.b)}
        direct = per_example_test(side[ex.a], side[ex.b], LABELS, ["accuracy"], "accuracy", samples=200)
        assert ex.result.diff == pytest.approx(direct.diff) and ex.result.diff > 10  # 85% against 60% right
        assert ex.holm_p == pytest.approx(direct.bootstrap_p) and ex.holm_p < 0.05
    readme = (tmp_path / "r" / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### 3.3"):readme.index("## 4.")]
    headings = [line for line in section.splitlines() if line.startswith("#### ")]
    assert [h.split(" | ")[2] for h in headings] == ["init layers:1,2,3", "init layers:4,8,12", "kd", "none"]
    assert section.count("| layers:1,2,3 | layers:4,8,12 | 0 1 2 | ↑ ") == 2


def test_report_command_per_example_is_kept_on_rebuild_and_validated(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    with ResultsStore("results.sqlite") as store:
        for r in _rows():
            assert store.put(r)
    assert main(["report", "--results", "results.sqlite", "--out", "rep", "--per-example"]) == 0
    first = Path("rep/per_example.csv").read_bytes()
    assert "--per-example" in Path("rep/README.md").read_text(encoding="utf-8")
    assert main(["report", "--results", "results.sqlite", "--out", "rep"]) == 0  # the Rebuild line: same tests
    assert Path("rep/per_example.csv").read_bytes() == first
    assert main(["report", "--results", "results.sqlite", "--out", "rep", "--bootstrap-samples", "0"]) == 0
    assert not Path("rep/per_example.csv").exists()
    readme = Path("rep/README.md").read_text(encoding="utf-8")
    assert "3.3 Per-example" not in readme and "--bootstrap-samples 0`" in readme
    capfd.readouterr()
    assert main(["report", "--results", "results.sqlite", "--out", "rep2", "--bootstrap-samples", "-5"]) == 2
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and "--bootstrap-samples must be a whole number >= 0" in err[0]
    assert not Path("rep2").exists()


def test_report_without_predictions_says_na(tmp_path):
    build_report(_rows(with_predictions=False), tmp_path / "r", command="x", per_example=50)
    with (tmp_path / "r" / "per_example.csv").open(newline="", encoding="utf-8") as f:
        notes = [r["note"] for r in csv.DictReader(f)]
    assert len(notes) == 3 and all(n.startswith("no per-example predictions stored") for n in notes)
    assert "| n/a |" in (tmp_path / "r" / "README.md").read_text(encoding="utf-8")


def test_perplexity_per_window_bootstrap_is_exp_of_the_token_weighted_nll_in_its_own_units():
    """Causal LM: predictions are each window's mean NLL, labels its scored tokens; a run's perplexity is
    exp(sum(nll * tokens) / sum(tokens)) and the observed difference is in perplexity units (not x 100)."""
    nll_a = {0: [4.0, 5.0, 6.0], 1: [4.2, 5.1, 5.9]}
    nll_b = {0: [4.1, 5.2, 6.1], 1: [4.3, 5.0, 6.2]}
    tokens = [100, 50, 10]

    def ppl(nll):
        return math.exp(sum(x * t for x, t in zip(nll, tokens)) / sum(tokens))
    assert batched_score(["perplexity"], "perplexity", np.array([nll_a[0]]), np.array([tokens]))[0] == pytest.approx(ppl(nll_a[0]))
    result = per_example_test(nll_a, nll_b, tokens, ["perplexity"], "perplexity", samples=200)
    expected = np.mean([ppl(nll_a[s]) - ppl(nll_b[s]) for s in (0, 1)])
    assert result.diff == pytest.approx(expected, abs=1e-8) and -20 < expected < 0  # a is better (lower) here
    assert result.mcnemar == ()  # no right/wrong per window


def test_per_example_section_names_perplexity_units_and_no_mcnemar_for_an_lm_task():
    """The section's header says a perplexity Δ is in its own units, and an LM row's McNemar cell says why it is empty
    (not "regression"); a classification-only report keeps the plain header."""
    from distilbench.report.tables import per_example_section
    from distilbench.results.per_example import ExampleComparison, ExampleTest

    test = ExampleTest((0, 1), 3, -1.5, -2.0, -1.0, 0.001)
    lm = ExampleComparison("wikitext2 | fam", "wikitext2", "kd", "none", "h1", "h2", test, 0.002, False, "perplexity")
    md = "\n".join(per_example_section([lm], 200, {}))
    assert "main score × 100; perplexity in its own units" in md
    assert "| kd | none | 0 1 | ↑ -1.50 | -2.00 – -1.00 | 0.001 | **0.002** | – (perplexity) |" in md  # lower = better: ↑
    reg = ExampleComparison("stsb | fam", "stsb", "kd", "none", "h1", "h2", test, 0.002, True, "regression")
    md = "\n".join(per_example_section([reg], 200, {}))
    assert "perplexity" not in md and "| ↓ -1.50 |" in md and "| – (regression) |" in md


def test_each_pair_says_what_it_measures_and_why_mcnemar_is_empty():
    """McNemar needs right/wrong examples: a QA pair (per-question F1), a regression and a perplexity pair each name
    their kind in the empty McNemar cell, read from the task's metrics (not from a list of LM tasks)."""
    from distilbench.report.tables import per_example_section
    from distilbench.results.per_example import EXAMPLE_SCORE, PERPLEXITY, ExampleComparison, ExampleTest, _measure

    assert _measure([EXAMPLE_SCORE], EXAMPLE_SCORE) == "per-question"
    assert _measure([PERPLEXITY], PERPLEXITY) == "perplexity"
    assert _measure(["pearson", "spearman"], "pearson") == "regression"
    assert _measure(["accuracy", "f1"], "f1") == "classification"
    test = ExampleTest((0, 1, 2), 5, 2.5, 1.0, 4.0, 0.004)
    qa = ExampleComparison("squad-devsplit | fam", "squad-devsplit", "kd", "none", "h1", "h2", test, 0.01, True, "per-question")
    md = "\n".join(per_example_section([qa], 200, {}))
    assert "| kd | none | 0 1 2 | ↑ 2.50 | 1.00 – 4.00 | 0.004 | **0.010** | – (per-question) |" in md
    assert "perplexity" not in md

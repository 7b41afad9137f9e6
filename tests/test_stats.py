"""Tests for distilbench.results.stats: paired tests against scipy and hand computations, Holm, cells, labels, families."""
from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as sps

from distilbench.results.stats import (Cell, cells_from_rows, compare, describe, families, holm, init_order, objective_order,
                               paired_test, t_interval)

T_975_DF4 = 2.7764451051977987  # two-sided 95% t quantile, 4 degrees of freedom (printed t tables: 2.776)


# --------------------------------------------------------------------------- paired tests


def test_paired_test_by_hand_and_scipy():
    a = {0: 71.0, 1: 72.0, 2: 73.0, 3: 74.0, 4: 75.0}
    b = {s: 70.0 for s in a}  # differences 1, 2, 3, 4, 5
    r = paired_test(a, b)
    assert r.n == 5 and not r.mismatched_seeds and r.reason == ""
    assert r.mean_diff == pytest.approx(3.0, abs=1e-12)
    sd = statistics.stdev([1, 2, 3, 4, 5])  # sqrt(2.5)
    half = T_975_DF4 * sd / math.sqrt(5)
    assert (r.ci_low, r.ci_high) == pytest.approx((3.0 - half, 3.0 + half), abs=1e-9)
    assert (r.ci_low, r.ci_high) == pytest.approx((1.0367, 4.9633), abs=1e-4)
    # t = 3 / (sd / sqrt 5) = 4.2426 with 4 df
    assert r.t_p == pytest.approx(2 * sps.t.sf(3.0 / (sd / math.sqrt(5)), 4), rel=1e-9)
    assert r.t_p == pytest.approx(sps.ttest_rel([71, 72, 73, 74, 75], [70] * 5).pvalue, rel=1e-9)
    assert r.t_p == pytest.approx(0.01324, abs=1e-5)
    # Wilcoxon, exact: all 5 differences positive -> two-sided p = 2 / 2^5
    assert r.wilcoxon_p == pytest.approx(0.0625, abs=1e-12)


def test_paired_test_matches_scipy_on_mixed_signs():
    a = [61.2, 64.1, 58.7, 66.3, 62.0, 65.5, 60.9]
    b = [60.0, 61.4, 59.8, 62.8, 61.3, 63.2, 61.1]  # |differences| all distinct: scipy's exact Wilcoxon
    r = paired_test(dict(enumerate(a)), dict(enumerate(b)))
    assert r.n == 7
    assert r.mean_diff == pytest.approx(sum(x - y for x, y in zip(a, b)) / 7, abs=1e-9)
    assert r.t_p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
    assert r.wilcoxon_p == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-9)
    assert 0.0 < r.wilcoxon_p < 1.0 and 0.0 < r.t_p < 1.0
    assert r.ci_low < r.mean_diff < r.ci_high
    # swapping the sides flips the difference and keeps the p-values
    s = paired_test(dict(enumerate(b)), dict(enumerate(a)))
    assert s.mean_diff == pytest.approx(-r.mean_diff) and s.t_p == pytest.approx(r.t_p)
    assert (s.ci_low, s.ci_high) == pytest.approx((-r.ci_high, -r.ci_low))
    assert s.wilcoxon_p == pytest.approx(r.wilcoxon_p)


def test_float_noise_does_not_split_ties():
    # 61.2 - 60.0 and 59.9 - 58.7 are both 1.2, but not as floats: a tie, so scipy's tie-corrected normal
    # approximation applies, exactly as for the rounded differences
    a = [61.2, 64.1, 59.9, 66.3, 62.0]
    b = [60.0, 61.4, 58.7, 62.8, 61.3]
    assert len({abs(x - y) for x, y in zip(a, b)}) == 5  # the float differences look distinct
    r = paired_test(dict(enumerate(a)), dict(enumerate(b)))
    assert r.wilcoxon_p == pytest.approx(sps.wilcoxon([1.2, 2.7, 1.2, 3.5, 0.7]).pvalue, rel=1e-9)


def test_paired_test_pairs_by_seed_not_by_position():
    a = {0: 60.0, 1: 70.0, 2: 65.0}
    b = {2: 64.0, 0: 59.0, 1: 69.5}  # the same seeds, listed in another order
    r = paired_test(a, b)
    assert r.mean_diff == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert r.t_p == pytest.approx(sps.ttest_rel([60, 70, 65], [59, 69.5, 64]).pvalue, rel=1e-9)


def test_mismatched_seeds_are_marked_not_paired():
    r = paired_test({0: 60.0, 1: 61.0, 2: 62.0}, {0: 59.0, 1: 60.0, 3: 58.0})
    assert r.mismatched_seeds is True
    assert r.n == 0
    for value in (r.mean_diff, r.ci_low, r.ci_high, r.t_p, r.wilcoxon_p):
        assert math.isnan(value)
    assert "only in a: [2]" in r.reason and "only in b: [3]" in r.reason
    # a subset is refused too: no silent pairing on the intersection
    assert paired_test({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 1.0}).mismatched_seeds


def test_degenerate_cases():
    one = paired_test({0: 70.0}, {0: 69.0})
    assert one.n == 1 and one.mean_diff == 1.0 and math.isnan(one.t_p) and math.isnan(one.wilcoxon_p)
    assert "n < 2" in one.reason
    zero = paired_test({0: 70.0, 1: 71.0, 2: 72.0}, {0: 70.0, 1: 71.0, 2: 72.0})
    assert (zero.t_p, zero.wilcoxon_p, zero.mean_diff) == (1.0, 1.0, 0.0) and "zero" in zero.reason
    # equal non-zero differences (float noise included): t is infinite, p = 0; Wilcoxon exact n=3 -> 0.25
    const = paired_test({0: 0.3 * 100, 1: 0.2 * 100, 2: 0.7 * 100}, {0: 0.2 * 100, 1: 0.1 * 100, 2: 0.6 * 100})
    assert const.t_p == 0.0 and const.mean_diff == pytest.approx(10.0)
    assert const.wilcoxon_p == pytest.approx(0.25) and "equal" in const.reason
    assert paired_test({}, {}).n == 0


def test_describe_and_t_interval():
    d = describe([60.0, 62.0, 64.0, 66.0, 68.0])
    assert d["n"] == 5 and d["mean"] == 64.0
    assert d["std"] == pytest.approx(statistics.stdev([60, 62, 64, 66, 68]))  # ddof=1: sqrt(10)
    half = T_975_DF4 * math.sqrt(10) / math.sqrt(5)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((64 - half, 64 + half))
    single = describe([61.0])
    assert single["mean"] == 61.0 and math.isnan(single["std"]) and math.isnan(single["ci_low"])
    assert all(math.isnan(x) for x in t_interval([1.0]))


# --------------------------------------------------------------------------- Holm


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_keeps_order_and_skips_nan():
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    out = holm([0.01, float("nan"), 0.02])  # m = 2: NaN is not a comparison
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    ps = [0.001, 0.2, 0.011, 0.04, 0.03]
    adjusted = holm(ps)
    ranked = sorted(range(len(ps)), key=lambda i: ps[i])
    assert all(adjusted[ranked[i]] <= adjusted[ranked[i + 1]] for i in range(len(ps) - 1))  # monotone
    assert all(a >= p for a, p in zip(adjusted, ps)) and max(adjusted) <= 1.0
    assert holm([]) == []


# --------------------------------------------------------------------------- cells, labels, families


def row(task="rte", objective="kd", init="layers:1,2,3", seed=0, score=0.6, teacher="mpnet-base", epochs=2.0,
        objective_params=None, **extra):
    identity = {"task": task, "task_version": "1.0", "objective": objective, "objective_version": "1.0",
                "objective_params": objective_params if objective_params is not None else {}, "init": init,
                "student": f"{teacher}[{init}]", "student_weights": None, "teacher": teacher, "teacher_key": f"{task}-t",
                "hparams": {"epochs": epochs}, "dev": f"{task}-dev", "seed": seed}
    from distilbench.hashing import stable_hash

    return {"run_key": stable_hash(identity), "kind": "student", "task": task, "objective": objective, "init": init,
            "teacher": teacher, "student": identity["student"], "seed": seed,
            "config_hash": stable_hash({k: v for k, v in identity.items() if k != "seed"}), "score": score,
            "teacher_score": 0.7, "params": identity, "extra": {}, **extra}


def test_cells_group_scale_and_describe():
    rows = [row(objective=o, seed=s, score=0.6 + 0.01 * s + (0.02 if o == "kd" else 0)) for o in ("kd", "none")
            for s in (0, 1, 2)]
    rows.append(row(objective="kd", seed=0, score=None))  # unfinished: ignored
    rows.append({**row(objective="none", seed=5, score=0.1), "kind": "teacher"})  # not a student: ignored
    cells = cells_from_rows(rows)
    assert [(c.task, c.objective) for c in cells] == [("rte", "kd"), ("rte", "none")]
    kd = cells[0]
    assert kd.seeds == [0, 1, 2] and kd.scores[1] == pytest.approx(63.0)
    assert kd.stats["mean"] == pytest.approx(63.0) and kd.stats["std"] == pytest.approx(1.0)
    assert kd.main_score == "accuracy" and kd.higher_is_better and kd.teacher_scores == (pytest.approx(70.0),)
    assert kd.setting == cells[1].setting  # only the objective differs
    with pytest.raises(ValueError, match="two rows for seed 0"):
        cells_from_rows([row(), {**row(), "run_key": "other"}])


def test_a_multi_teacher_objective_is_compared_with_single_teacher_kd_and_none():
    """The team (its members' teacher keys) sits beside the objective's parameters in the run identity: it belongs to
    the objective, so AutoSKD / AvgKD share one family with kd and none (the comparison paper 003 makes)."""
    team = {"team": ["rte-t", "rte-small", "rte-weak"]}
    rows = [row(objective=o, seed=s, score=0.6 + 0.01 * s + 0.001 * k)
            for k, o in enumerate(("none", "kd", "avgkd", "autoskd")) for s in (0, 1, 2)]
    for r in rows:
        if r["objective"] in ("avgkd", "autoskd"):
            r["params"] = {**r["params"], **team}
    cells = cells_from_rows(rows)
    assert len({c.setting for c in cells}) == 1
    pairs = {(c.a, c.b) for c in compare(cells, "objectives")}
    assert len(pairs) == 6 and ("kd", "autoskd") in pairs and ("none", "avgkd") in pairs
    # two teams for one objective are still two cells, told apart by their labels, and still compared
    other = [{**r, "params": {**r["params"], "team": ["rte-t"]}, "config_hash": "other", "run_key": f"o{i}"}
             for i, r in enumerate(rows) if r["objective"] == "avgkd"]
    cells = cells_from_rows(rows + other)
    assert len([c for c in cells if c.objective == "avgkd"]) == 2 and len({c.setting for c in cells}) == 1


def test_labels_name_what_differs():
    rows = [row(objective="kd", objective_params={"temperature": t, "alpha_kd": 1.0}, seed=s, task=task)
            for t in (2.0, 4.0) for s in (0, 1) for task in ("rte", "mrpc")]
    rows += [row(objective="kd", objective_params={"temperature": 2.0, "alpha_kd": 1.0}, seed=s, task="stsb")
             for s in (0, 1)]  # only one kd in stsb: it still carries the label of its configuration
    rows += [row(objective="none", seed=s, task=task) for s in (0, 1) for task in ("rte", "mrpc")]
    labels = {(c.task, c.label) for c in cells_from_rows(rows)}
    assert labels == {(t, lb) for t in ("rte", "mrpc") for lb in ("kd [temperature=2.0]", "kd [temperature=4.0]", "none")} \
        | {("stsb", "kd [temperature=2.0]")}


def test_families_compare_only_like_with_like():
    rows = []
    for o in ("none", "kd", "att-kl"):
        for init in ("layers:1,2,3", "layers:4,8,12"):
            for s in (0, 1, 2):
                rows.append(row(objective=o, init=init, seed=s, score=0.6 + 0.01 * s + 0.02 * (o == "kd")
                                + 0.001 * (s * s) * (o == "att-kl") + 0.03 * (init == "layers:1,2,3")))
    rows += [row(objective=o, epochs=5.0, seed=s, score=0.5) for o in ("none", "kd") for s in (0, 1, 2)]
    cells = cells_from_rows(rows)
    objective_fams = families(cells, "objectives")
    # per init with epochs 2: none, kd, att-kl; epochs 5 (layers:1,2,3): none, kd -- never mixed with epochs 2
    assert sorted(len(members) for _, members in objective_fams) == [2, 3, 3]
    for _, members in objective_fams:
        assert len({(c.init, c.setting) for c in members}) == 1
        assert [c.objective for c in members] == [o for o in ("none", "kd", "att-kl") if o in {c.objective for c in members}]
    init_fams = families(cells, "inits")
    assert sorted(sorted(c.init for c in m) for _, m in init_fams) == [["layers:1,2,3", "layers:4,8,12"]] * 3
    comparisons = compare(cells, "objectives")
    assert len(comparisons) == 3 + 3 + 1
    inits = compare(cells, "inits")
    assert len(inits) == 3 and all(c.a == "layers:1,2,3" and c.b == "layers:4,8,12" for c in inits)
    assert all(c.result.mean_diff == pytest.approx(3.0) for c in inits)


def test_compare_applies_holm_within_a_family_and_skips_mismatched():
    rows = []
    scores = {"none": [60.0, 62.0, 61.0], "kd": [63.0, 63.5, 64.5], "att-kl": [65.0, 66.5, 65.5]}
    for o, values in scores.items():
        for s, v in enumerate(values):
            rows.append(row(objective=o, seed=s, score=v / 100))
    rows.append(row(objective="hid-seq", seed=0, score=0.6))
    rows.append(row(objective="hid-seq", seed=1, score=0.61))  # seeds 0, 1 only
    comparisons = compare(cells_from_rows(rows), "objectives")
    assert [(c.a, c.b) for c in comparisons] == [("none", "kd"), ("none", "att-kl"), ("none", "hid-seq"),
                                                 ("kd", "att-kl"), ("kd", "hid-seq"), ("att-kl", "hid-seq")]
    valid = [c for c in comparisons if not c.result.mismatched_seeds]
    assert len(valid) == 3
    assert [c.holm_p for c in valid] == pytest.approx(holm([c.result.t_p for c in valid]))
    raw = sps.ttest_rel(scores["none"], scores["kd"]).pvalue
    assert valid[0].result.t_p == pytest.approx(raw, rel=1e-9)
    assert valid[0].result.mean_diff < 0  # none is worse than kd
    for c in comparisons:
        if c.b == "hid-seq":
            assert c.result.mismatched_seeds and math.isnan(c.holm_p)


def test_orders():
    assert objective_order(["att-kl", "kd", "none", "hid-cls", "kd [temperature=4.0]"]) == \
        ["none", "kd", "kd [temperature=4.0]", "att-kl", "hid-cls"]
    assert objective_order(["att-kl", "kd", "none"], ["kd", "att-kl"]) == ["kd", "att-kl", "none"]
    assert init_order(["layers:4,8,12", "layers:10,11,12", "layers:1,8,12", "layers:1,2,3"]) == \
        ["layers:1,2,3", "layers:1,8,12", "layers:4,8,12", "layers:10,11,12"]
    assert init_order(["layers:1,2,3", "layers:4,8,12"], ["layers:4,8,12"]) == ["layers:4,8,12", "layers:1,2,3"]
    assert isinstance(cells_from_rows([row()])[0], Cell)

"""Claims as data, verdicts as code (distilbench.results.claims): one rule, fed synthetic cells for each case; the
report's claims section and claims.csv; claims kept across a rebuild; malformed claims refused in one line."""
from __future__ import annotations

import csv
import math
from dataclasses import replace

import pytest

from distilbench.results.chance import ChanceResult
from distilbench.results.claims import evaluate, parse_claims, verdict
from distilbench.results.per_example import ExampleComparison, ExampleTest
from distilbench.results.stats import Cell

ABOVE = ChanceResult(True, 50.0, 70.0, 0.001, 0.001, False)
AT_CHANCE = ChanceResult(True, 50.0, 50.5, 0.4, 0.3, True)


def cell(label, scores, teacher=80.0, chance=ABOVE, task="rte", init="layers:1,2,3", caveat=None, objective=None,
         revisions=("code:aaaa",)):
    return Cell(task, objective or label.split(" ")[0], init, "mpnet-base", f"mpnet-base[{init}]", f"h-{label}-{init}",
                label, "s", "i", "accuracy", True, dict(enumerate(scores)), (teacher,), chance=chance,
                pooling_caveat=caveat, revisions=revisions)


def claims(*pairs, distillation=True):
    return parse_claims([{"id": f"c{i}", "paper": "001 Table 2", "claim": f"{a} beats {b}", "better": a, "worse": b,
                          "distillation": distillation} for i, (a, b) in enumerate(pairs)], "test")


BIG = [70.0, 71.0, 72.0, 73.0, 74.0]
SMALL = [60.0, 61.5, 61.0, 62.5, 64.0]  # 10 points lower, steady: significant even after Holm over a few claims


def test_the_rule_itself():
    assert verdict(not_testable=["x at chance"], n=5, diff=3.0, p_holm=0.001, detectable=1.0) == ("not testable", "x at chance")
    assert verdict(not_testable=[], n=5, diff=3.0, p_holm=0.01, detectable=1.0)[0] == "reproduced"
    assert verdict(not_testable=[], n=5, diff=-3.0, p_holm=0.01, detectable=1.0)[0] == "contradicted"
    v, why = verdict(not_testable=[], n=5, diff=3.0, p_holm=0.2, detectable=4.25)
    assert v == "inconclusive" and "detectable over seeds: 4.25" in why
    assert verdict(not_testable=[], n=1, diff=3.0, p_holm=math.nan, detectable=math.nan)[0] == "inconclusive"


def test_significant_claim_is_reproduced_and_the_opposite_contradicted():
    cells = [cell("ted", BIG), cell("lwd", SMALL)]
    out = evaluate(claims(("ted", "lwd"), ("lwd", "ted")), cells)
    assert [r.verdict for r in out] == ["reproduced", "contradicted"]
    assert out[0].diff == pytest.approx(10.2) and out[1].diff == pytest.approx(-10.2)
    assert out[0].family_size == 2 and out[0].p_holm >= out[0].p


def test_a_cell_at_chance_makes_the_claim_not_testable_whatever_the_p():
    cells = [cell("ted", BIG), cell("lwd", SMALL, chance=AT_CHANCE)]
    r = evaluate(claims(("ted", "lwd")), cells)[0]
    assert r.verdict == "not testable" and "lwd at chance" in r.reason and r.p < 0.05


def test_a_teacher_no_better_than_its_students_cannot_test_a_distillation_claim():
    cells = [cell("ted", BIG, teacher=72.0), cell("lwd", SMALL, teacher=72.0)]
    r = evaluate(claims(("ted", "lwd")), cells)[0]
    assert r.verdict == "not testable" and "teacher (72.00) not better than its students" in r.reason
    # an init claim (not about distillation) does not ask it
    assert evaluate(claims(("ted", "lwd"), distillation=False), cells)[0].verdict == "reproduced"


def test_first_token_heads_on_a_mean_pooled_model_are_not_testable():
    cells = [cell("hid-cls", BIG, caveat="not testable with first-token heads: ..."), cell("kd", SMALL)]
    r = evaluate(claims(("hid-cls", "kd")), cells)[0]
    assert r.verdict == "not testable" and "first-token heads" in r.reason


def test_cells_of_different_training_code_keep_their_verdict_and_are_flagged():
    same = evaluate(claims(("ted", "lwd")), [cell("ted", BIG), cell("lwd", SMALL)])[0]
    assert same.verdict == "reproduced" and "flagged" not in same.reason
    mixed = evaluate(claims(("ted", "lwd")), [cell("ted", BIG), cell("lwd", SMALL, revisions=("code:bbbb",))])[0]
    assert mixed.verdict == "reproduced"
    assert mixed.reason.endswith("flagged: cells computed by 2 versions of the training path (aaaa, bbbb)")
    old = verdict(not_testable=[], n=3, diff=1.0, p_holm=0.5, detectable=3.0, revisions=("git:abc", "git:def-dirty"))
    assert old[0] == "inconclusive" and "2 revisions (abc, def-dirty); the training path's code was not recorded" in old[1]
    assert "flagged" in verdict(not_testable=["x at chance"], n=3, diff=1.0, p_holm=0.5, detectable=3.0,
                                revisions=("code:a", "code:b"))[1]


def test_the_training_path_fingerprint_ignores_prose_and_follows_code(tmp_path):
    from distilbench.results.revisions import row_revision
    from distilbench.training.runs.provenance import code_fingerprint

    fp = code_fingerprint.__wrapped__
    (tmp_path / "training").mkdir()
    loop = tmp_path / "training" / "loop.py"
    loop.write_text('"""The loop."""\nx = 1  # one\n')
    base = fp(tmp_path)
    loop.write_text('"""The training loop, reworded."""\n# a comment\nx = 1\n')
    assert fp(tmp_path) == base
    (tmp_path / "training" / "export").mkdir()
    (tmp_path / "training" / "export" / "students.py").write_text("y = 2\n")  # not on the training path
    assert fp(tmp_path) == base
    loop.write_text('"""The loop."""\nx = 2\n')
    assert fp(tmp_path) != base and len(base) == 12
    assert row_revision({"extra": {"code_fingerprint": base}, "git_rev": "abc"}) == f"code:{base}"
    assert row_revision({"extra": "{}", "git_rev": "abc-dirty"}) == "git:abc-dirty"
    assert row_revision({"extra": {}}) == "unknown"


MODEST = [71.0, 69.0, 74.0, 72.0, 71.0]  # +1.26 over BASE with noise (t p ~0.1): not significant on one task
BASE = [70.0, 69.5, 71.0, 70.0, 70.2]


def test_across_tasks_combines_testable_tasks_with_stouffer_and_its_own_holm_family():
    from distilbench.results.claims import ACROSS, stouffer

    cells = [cell("kd", MODEST, task=t) for t in ("rte", "mrpc", "sst2")] + \
            [cell("none", BASE, task=t) for t in ("rte", "mrpc", "sst2")]
    out = evaluate(claims(("kd", "none"), distillation=False), cells)
    per_task, across = [r for r in out if not r.across], [r for r in out if r.across]
    assert [r.task for r in per_task] == ["mrpc", "rte", "sst2"] and len(across) == 1
    a = across[0]
    assert a.task == ACROSS and a.tasks == ("mrpc", "rte", "sst2") and a.n == 15 and a.family_size == 1
    assert a.p == pytest.approx(stouffer([r.diff for r in per_task], [r.p for r in per_task], [5, 5, 5]))
    assert a.p < min(r.p for r in per_task)  # three agreeing tasks say more than one
    assert a.verdict == "reproduced" and all(r.verdict == "inconclusive" for r in per_task)
    assert a.diff == pytest.approx(sum(r.diff for r in per_task) / 3)


def test_stouffer_by_hand():
    from scipy import stats

    from distilbench.results.claims import stouffer

    z1, z2 = stats.norm.isf(0.04 / 2), -stats.norm.isf(0.5 / 2)
    expected = 2 * stats.norm.sf(abs((2 * z1 + 3 * z2) / (4 + 9) ** 0.5))
    assert stouffer([1.0, -1.0], [0.04, 0.5], [4, 9]) == pytest.approx(expected)


def test_across_tasks_leaves_out_untestable_tasks_and_needs_two():
    cells = [cell("kd", MODEST, task="rte"), cell("none", BASE, task="rte"),
             cell("kd", MODEST, task="mrpc", chance=AT_CHANCE), cell("none", BASE, task="mrpc")]
    a = [r for r in evaluate(claims(("kd", "none"), distillation=False), cells) if r.across][0]
    assert a.verdict == "not testable" and "1 of 2 tasks testable" in a.reason
    one_task = evaluate(claims(("kd", "none"), distillation=False), cells[:2])
    assert not any(r.across for r in one_task)


def test_significant_only_per_example_is_inconclusive_with_the_examples_beside_it():
    noisy = [70.0, 62.0, 75.0]
    cells = [cell("ted", noisy), cell("lwd", [69.0, 63.0, 73.0])]
    example = ExampleComparison("f", "rte", "ted", "lwd", "h-ted-layers:1,2,3", "h-lwd-layers:1,2,3",
                                ExampleTest((0, 1, 2), 277, 1.0, 0.5, 1.5, 0.001), 0.003)
    r = evaluate(claims(("ted", "lwd")), cells, [example])[0]
    assert r.verdict == "inconclusive" and r.examples == "examples agree"
    flipped = replace(example, result=replace(example.result, diff=-1.0))
    assert evaluate(claims(("ted", "lwd")), cells, [flipped])[0].examples == "examples disagree"


def test_holm_runs_over_the_whole_family_of_claims():
    # alone, this pair is significant; among many claims its Holm-corrected p is not
    a, b = [70.0, 71.0, 72.0, 73.0], [69.0, 70.7, 70.4, 71.9]  # differences 1.0, 0.3, 1.6, 1.1: t p ~ 0.03
    cells = [cell("x", a), cell("y", b)] + [cell(f"o{i}", [60.0, 61.0, 59.0, 62.0]) for i in range(8)]
    alone = evaluate(claims(("x", "y")), cells)[0]
    assert alone.verdict == "reproduced" and alone.family_size == 1
    many = evaluate(claims(("x", "y"), *[(f"o{i}", f"o{i + 1}") for i in range(7)]), cells)
    assert many[0].family_size == 8 and many[0].p_holm > alone.p_holm
    assert alone.p < 0.05 and many[0].p_holm == pytest.approx(min(1.0, 8 * alone.p))  # the others' p are 1
    assert many[0].verdict == "inconclusive"


def test_a_missing_or_ambiguous_cell_is_said():
    out = evaluate(claims(("ted", "lwd")), [cell("ted", BIG)])
    assert out[0].verdict == "not testable" and "0 cells labelled lwd" in out[0].reason
    two = [cell("ted", BIG), cell("lwd", SMALL), cell("lwd", SMALL, init="layers:4,8,12")]
    assert "name init/teacher" in evaluate(claims(("ted", "lwd")), two)[0].reason
    picked = parse_claims([{"id": "a", "paper": "p", "claim": "c", "better": "ted", "worse": "lwd", "init": "layers:1,2,3"}], "t")
    assert evaluate(picked, two)[0].verdict == "reproduced"


@pytest.mark.parametrize("bad, says", [
    ({"id": "a", "paper": "p", "claim": "c", "better": "x"}, "missing worse"),
    ({"id": "a", "paper": "p", "claim": "c", "better": "x", "worse": "y", "colour": 1}, "unknown key(s) colour"),
    ({"id": "a", "paper": "p", "claim": "c", "better": {"lable": "x"}, "worse": "y"}, "give the cell as a report label"),
    ({"id": "a", "paper": "p", "claim": "c", "better": "x", "worse": "y", "distillation": "yes"}, "true or false"),
])
def test_malformed_claims_are_refused(bad, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_claims([bad], "suite s.yaml")
    with pytest.raises(ValueError, match="used twice"):
        parse_claims([{"id": "a", "paper": "p", "claim": "c", "better": "x", "worse": "y"}] * 2, "s")


def test_report_opens_with_the_claims_and_a_rebuild_keeps_them(tmp_path, capsys):
    from rows import student_row

    from distilbench.cli import main
    from distilbench.results.store import ResultsStore

    labels = [i % 2 for i in range(40)]
    preds = lambda k: [1 - y if i < k else y for i, y in enumerate(labels)]
    rows = [student_row("kd", s, preds(2 + s), labels, {"majority": 0.5}, {}) for s in range(3)]
    rows += [student_row("none", s, preds(12 + s), labels, {"majority": 0.5}, {}) for s in range(3)]
    store = tmp_path / "r.sqlite"
    with ResultsStore(str(store)) as db:
        for r in rows:
            db.put(r)
    suite = tmp_path / "s.yaml"
    suite.write_text("claims:\n  - {id: kd-none, paper: '002 Table 1', claim: KD beats fine-tuning, better: kd, worse: none,"
                     " paper_numbers: 'QNLI 66.5 vs 60'}\n")
    out = tmp_path / "rep"
    assert main(["report", "--results", str(store), "--out", str(out), "--claims", str(suite)]) == 0
    text = (out / "README.md").read_text()
    assert text.index("## Claims") < text.index("## 1. Objectives")
    assert "| kd-none: KD beats fine-tuning | 002 Table 1 | QNLI 66.5 vs 60 | rte |" in text
    with (out / "claims.csv").open() as f:
        got = list(csv.DictReader(f))
    assert got[0]["verdict"] == "not testable" and "teacher" in got[0]["reason"]  # teacher 70 is below kd's 90+
    before = (out / "claims.csv").read_text()
    assert main(["report", str(out)]) == 0
    assert (out / "claims.csv").read_text() == before
    capsys.readouterr()
    assert main(["report", "--results", str(store), "--out", str(out), "--claims", str(tmp_path / "none.yaml")]) == 2
    assert "--claims" in capsys.readouterr().err


def test_findings_table_is_written_between_the_markers(tmp_path):
    from distilbench.report.findings import BEGIN, END, render

    rep = tmp_path / "reports" / "x"
    rep.mkdir(parents=True)
    (rep / "claims.csv").write_text(
        "id,paper,claim,paper_numbers,task,better,worse,n,better_mean,worse_mean,diff,ci_low,ci_high,p,p_holm,"
        "family_size,detectable,verdict,reason,examples\n"
        "c1,001 Table 2,TED beats LWD,QNLI 93.1 vs 92.9,rte,ted,lwd,3,70.0,69.0,1.0,0.1,1.9,0.01,0.02,2,0.9,"
        "reproduced,Holm p 0.02 < 0.05,examples agree\n"
        "c2,001 Table 2,KD beats none,-,sst2,kd,none,8,83.0,82.0,1.0,0.1,1.9,0.01,0.04,2,0.9,reproduced,Holm p 0.04 < 0.05,n/a\n"
        "c2,001 Table 2,KD beats none,-,stsb,kd,none,8,80.0,80.0,0.0,-0.1,0.1,0.9,1,2,0.9,inconclusive,Holm p 1,n/a\n"
        "c2,001 Table 2,KD beats none,-,across tasks,kd,none,16,,,0.5,,,0.02,0.03,1,,reproduced,Holm p 0.03; Stouffer,n/a\n")
    text = f"intro\n{BEGIN}\nold table\n{END}\noutro\n"
    new = render(text, tmp_path / "reports")
    assert new.startswith(f"intro\n{BEGIN}\n") and new.endswith(f"{END}\noutro\n") and "old table" not in new
    assert "| c1: TED beats LWD | 001 Table 2 | QNLI 93.1 vs 92.9 | rte | ted 70.00 vs lwd 69.00; Δ 1.00, n=3 | 0.02 (2) | " \
           "**reproduced**: Holm p 0.02 < 0.05 | - | examples agree |" in new
    # a claim tested on several tasks: one row, its across-task verdict, each task's verdict beside it
    assert new.count("c2: KD beats none") == 1
    assert "| across tasks | kd vs none; mean Δ 0.50 over task × seed pairs, n=16 | 0.03 (1) | **reproduced**: Holm p 0.03; Stouffer | sst2: reproduced; " \
           "stsb: inconclusive | n/a |" in new
    assert render(new, tmp_path / "reports") == new
    with pytest.raises(ValueError, match="markers"):
        render("no markers", tmp_path / "reports")


def test_readme_findings_table_equals_the_generated_one():
    from pathlib import Path

    from distilbench.report.findings import render

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert render(readme, root / "reports") == readme, "run `distilbench findings` and commit README.md"

"""Tests for `distilbench report`: golden Markdown and CSV of a fixed hand-made results table, byte-identical
rebuilds, what the tables and matrices say, and the command line.

The results are 2 tasks × 3 objectives × 2 inits × 3 seeds of hand-made rows (no training), plus one cell that
misses a seed. Regenerate the golden files after an intended change with ``DISTILBENCH_UPDATE_GOLDEN=1 pytest
tests/test_report.py`` and review the diff: the golden test rewrites the files that differ and fails, saying so; rerun
without the variable.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conftest import read_csv
from distilbench.cli import main
from distilbench.hashing import run_key, stable_hash
from distilbench.report.build import _builder_versions, build_report
from distilbench.results.stats import holm
from distilbench.results.store import ResultsStore

GOLDEN = Path(__file__).parent / "golden" / "report"
COMMAND = "distilbench report --results runs/golden.sqlite --out reports/golden"
TASKS = {"rte": 0.62, "mrpc": 0.80}
OBJECTIVES = {"none": 0.0, "kd": 0.015, "att-kl": 0.03}
INITS = {"layers:1,2,3": 0.02, "layers:4,8,12": 0.0}
MAJORITY = {"rte": 0.5271, "mrpc": 0.748}  # stored majority-class scores: the signal check's floor
SEED_EFFECT = [0.01, -0.012, 0.003]  # shared by every cell of a seed: pairing removes it
NOISE = [[0.0040, -0.0060, 0.0010], [-0.0020, 0.0050, -0.0030], [0.0070, 0.0000, -0.0045],
         [-0.0050, -0.0015, 0.0060], [0.0010, 0.0035, -0.0025]]


def hand_rows() -> list[dict]:
    rows = []
    for ti, (task, base) in enumerate(TASKS.items()):
        for oi, (objective, effect) in enumerate(OBJECTIVES.items()):
            for ii, (init, init_effect) in enumerate(INITS.items()):
                for seed in (0, 1, 2):
                    if (task, objective, init, seed) == ("mrpc", "att-kl", "layers:4,8,12", 2):
                        continue  # one cell misses a seed: it must be marked, never paired
                    identity = {"task": task, "task_version": "1.0", "objective": objective, "objective_version": "1.0",
                                "objective_params": {"temperature": 2.0} if objective != "none" else {},
                                "init": init, "student": f"mpnet-base[{init}]", "student_weights": None,
                                "teacher": "mpnet-base", "teacher_key": f"{task}-teacher", "dev": f"{task}-dev",
                                "hparams": {"epochs": 2.0, "lr": 5e-05}, "seed": seed}
                    noise = NOISE[(ti * 6 + oi * 2 + ii) % 5][seed]
                    score = round(base + effect + init_effect + SEED_EFFECT[seed] + noise, 6)
                    rows.append({"run_key": run_key(identity), "kind": "student", "task": task, "task_version": "1.0",
                                 "objective": objective, "objective_version": "1.0", "init": init,
                                 "teacher": "mpnet-base", "student": identity["student"], "seed": seed,
                                 "config_hash": stable_hash({k: v for k, v in identity.items() if k != "seed"}),
                                 "score": score, "teacher_score": base + 0.08, "metrics": {"score": score},
                                 "params": identity, "git_rev": "0123456789ab",
                                 "versions": {"distilbench": "0.1.0", "python": "3.11.9", "torch": "2.13.0"},
                                 "created_at": f"2025-01-0{seed + 1}T00:00:00+00:00",
                                 "extra": {"best_epoch": 1, "majority": MAJORITY[task]}})
    return rows


@pytest.fixture
def store_rows(tmp_path) -> list[dict]:
    """The hand-made rows, written to and read back from a real results store."""
    store = ResultsStore(tmp_path / "results.sqlite")
    for r in hand_rows():
        assert store.put(r)
    rows = store.rows()
    store.close()
    return rows


def without_date(text: str, folder_too: bool = False) -> list[str]:
    """The README's lines without its Date line (and, for builds into two folders, the Rebuild line naming the folder)."""
    lines = text.splitlines()
    dates = [i for i, line in enumerate(lines) if line.startswith("Date:")]
    assert len(dates) == 1, "the README must have exactly one Date: line"
    lines = lines[:dates[0]] + lines[dates[0] + 1:]
    return [line for line in lines if not (folder_too and line.startswith("Rebuild: "))]


def build(rows, out: Path):
    return build_report(rows, out, command=COMMAND, results="runs/golden.sqlite")


# --------------------------------------------------------------------------- golden files


def test_golden_markdown_and_csv(store_rows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("reports/golden")
    build(store_rows, out)
    built = {name: (out / name).read_text(encoding="utf-8") for name in ("README.md", "cells.csv", "comparisons.csv")}
    builder_line = f"- **Report built with:** {_builder_versions()}"
    if os.environ.get("DISTILBENCH_UPDATE_GOLDEN"):
        def same(name: str) -> bool:  # as the assertions below compare: the README without its date and builders
            if not (GOLDEN / name).is_file():
                return False
            old, text = (GOLDEN / name).read_text(encoding="utf-8"), built[name]
            if name != "README.md":
                return old == text
            drop = lambda lines: [x for x in lines if not x.startswith("- **Report built with:**")]
            return drop(without_date(old)) == drop(without_date(text))

        changed = [name for name in built if not same(name)]
        if changed:  # rewritten, and still a failure: an update is never a silent pass
            GOLDEN.mkdir(parents=True, exist_ok=True)
            for name in changed:
                (GOLDEN / name).write_text(built[name], encoding="utf-8")
            pytest.fail(f"DISTILBENCH_UPDATE_GOLDEN: rewrote {', '.join(changed)} in {GOLDEN}; review the diff and rerun "
                        "without DISTILBENCH_UPDATE_GOLDEN")
    golden = {name: (GOLDEN / name).read_text(encoding="utf-8") for name in built}
    assert built["cells.csv"] == golden["cells.csv"]
    assert built["comparisons.csv"] == golden["comparisons.csv"]
    # the README: exactly the golden one except the Date line and the versions of the packages that built it
    new, old = without_date(built["README.md"]), without_date(golden["README.md"])
    assert builder_line in new
    assert [line for line in new if line != builder_line] == \
        [line for line in old if not line.startswith("- **Report built with:**")]


def test_dataframe_input_gives_the_same_report(store_rows, tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as store:
        frame = store.dataframe()
    build(store_rows, tmp_path / "rows")
    build(frame, tmp_path / "frame")
    for name in ("cells.csv", "comparisons.csv"):
        assert (tmp_path / "rows" / name).read_bytes() == (tmp_path / "frame" / name).read_bytes()
    assert without_date((tmp_path / "rows" / "README.md").read_text(), folder_too=True) == \
        without_date((tmp_path / "frame" / "README.md").read_text(), folder_too=True)


def test_rebuild_is_byte_identical_except_the_date(store_rows, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    build(store_rows, first)
    build(list(reversed(store_rows)), second)  # row order must not matter
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"README.md", "cells.csv", "comparisons.csv", "inits-mrpc.png", "inits-rte.png",
            "significance-rte-objectives-1.png", "significance-mrpc-inits-3.png"} <= set(names)
    assert not [n for n in names if n.startswith("scores-")]  # each task's two inits share one figure
    for name in names:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        if name == "README.md":
            assert without_date(a.decode(), folder_too=True) == without_date(b.decode(), folder_too=True)
        elif name == "report.json":  # it names the folder it was written to, as the README's Rebuild line does
            ja, jb = json.loads(a), json.loads(b)
            assert (ja.pop("folder"), jb.pop("folder")) == (str(first), str(second)) and ja == jb
        else:
            assert a == b, f"{name} differs between two builds"
        if name.endswith(".png"):
            assert a[:8] == b"\x89PNG\r\n\x1a\n" and len(a) > 5000
    # building into the same folder again replaces the files and leaves no stale plot behind
    (first / "scores-old-1.png").write_bytes(b"stale")
    build(store_rows, first)
    assert not (first / "scores-old-1.png").exists()
    assert sorted(p.name for p in first.iterdir()) == names


def test_one_init_figure_per_task_holds_every_cell(store_rows, tmp_path, monkeypatch):
    """Paper 002 Table 3's question: per task one figure with every objective × init cell, inits in suite order."""
    import distilbench.report.plots as report  # init_figures draws with this module's plot_inits

    drawn = {}
    monkeypatch.setattr(report, "plot_inits", lambda path, title, cells, labels, inits:
                        drawn.setdefault(path.name, (title, sorted((c.label, c.init, len(c.seeds)) for c in cells),
                                                     labels, inits)))
    build(store_rows, tmp_path / "r")
    assert sorted(drawn) == ["inits-mrpc.png", "inits-rte.png"]
    title, cells, labels, inits = drawn["inits-mrpc.png"]
    assert title == "mrpc: teacher mpnet-base, by student init"
    assert labels == ["none", "kd", "att-kl"] and set(inits) == set(INITS)
    assert cells == sorted((o, i, 2 if (o, i) == ("att-kl", "layers:4,8,12") else 3) for o in OBJECTIVES for i in INITS)
    readme = (tmp_path / "r" / "README.md").read_text()
    assert "![mrpc" in readme and "(inits-mrpc.png)" in readme and "scores-mrpc" not in readme


# --------------------------------------------------------------------------- what the report says


def test_tables_bold_best_and_mark_missing_seed(store_rows, tmp_path):
    report = build(store_rows, tmp_path / "r")
    text = (tmp_path / "r" / "README.md").read_text(encoding="utf-8")
    first = report.tables[0]  # teacher mpnet-base, init layers:1,2,3
    assert first.header == ["Objective", "rte (accuracy)", "mrpc (combined)", "Avg"] or \
        first.header == ["Objective", "mrpc (combined)", "rte (accuracy)", "Avg"]
    labels = [r[0] for r in first.rows]
    assert labels == ["none", "kd", "att-kl", "teacher", "majority class"]
    # att-kl has the largest effect: bold in every column, including Avg
    att = labels.index("att-kl")
    assert {(att, c) for c in range(1, 4)} <= first.bold
    assert not any(r == labels.index("none") for r, _ in first.bold)
    # the cell with 2 of 3 seeds says so, and every pair with it is marked instead of tested
    assert "(n=2)" in text
    assert "seeds differ" in text
    comparisons = read_csv(tmp_path / "r" / "comparisons.csv")
    marked = [c for c in comparisons if c["mismatched"] == "true"]
    assert len(marked) == 3  # att-kl vs none and vs kd (mrpc, 4,8,12), and its init pair
    assert all(c["t_p"] == "" and c["holm_p"] == "" and c["n"] == "0" for c in marked)
    assert all("seed sets differ" in c["note"] for c in marked)


def test_comparisons_csv_numbers(store_rows, tmp_path):
    build(store_rows, tmp_path / "r")
    comparisons = read_csv(tmp_path / "r" / "comparisons.csv")
    assert list(comparisons[0]) == ["task", "a", "b", "n", "mean_diff", "ci_low", "ci_high", "t_p", "wilcoxon_p",
                                    "holm_p", "mismatched", "kind", "family", "a_config_hash", "b_config_hash", "note"]
    # 2 tasks × 2 inits × 3 objective pairs + 2 tasks × 3 objectives × 1 init pair
    assert len(comparisons) == 12 + 6
    families: dict[str, list[dict]] = {}
    for c in comparisons:
        families.setdefault(c["family"], []).append(c)
    for fam in families.values():
        tested = [c for c in fam if c["mismatched"] == "false"]
        expected = holm([float(c["t_p"]) for c in tested])
        assert [float(c["holm_p"]) for c in tested] == pytest.approx(expected, rel=1e-5)
    # init pairs: layers:1,2,3 is 2 points better by construction (plus noise)
    inits = [c for c in comparisons if c["kind"] == "inits" and c["mismatched"] == "false"]
    assert len(inits) == 5 and all(c["a"] == "layers:1,2,3" and c["b"] == "layers:4,8,12" for c in inits)
    assert all(0.5 < float(c["mean_diff"]) < 3.5 for c in inits)
    # kd - none on rte with init 1,2,3, computed by hand from the generator
    rows = {(r["task"], r["objective"], r["init"], r["seed"]): 100 * r["score"] for r in store_rows}
    diffs = [rows[("rte", "kd", "layers:1,2,3", s)] - rows[("rte", "none", "layers:1,2,3", s)] for s in (0, 1, 2)]
    (kd_none,) = [c for c in comparisons if c["task"] == "rte" and c["kind"] == "objectives" and
                  c["a"] == "none" and c["b"] == "kd" and "init layers:1,2,3" in c["family"]]
    assert float(kd_none["mean_diff"]) == pytest.approx(-sum(diffs) / 3, abs=1e-4)
    assert kd_none["n"] == "3"


def test_significance_matrix_direction(store_rows, tmp_path):
    report = build(store_rows, tmp_path / "r")
    fam = [c for c in report.comparisons if c.kind == "inits" and c.task == "rte" and c.a_cell.objective == "kd"]
    assert len(fam) == 1 and fam[0].result.mean_diff > 0
    text = (tmp_path / "r" / "README.md").read_text(encoding="utf-8")
    section = text.split("#### rte: kd, teacher `mpnet-base`")[1].split("####")[0]
    row_123 = next(line for line in section.splitlines() if line.startswith("| layers:1,2,3 |"))
    row_4812 = next(line for line in section.splitlines() if line.startswith("| layers:4,8,12 |"))
    p = fam[0].holm_p
    shown = "<0.001" if p < 0.001 else f"{p:.3f}"
    assert f"↑ {shown}" in row_123 and f"↓ {shown}" in row_4812  # row > column reads ↑


def test_header(store_rows, tmp_path):
    build(store_rows, tmp_path / "r")
    lines = (tmp_path / "r" / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[2] == f"Command: `{COMMAND}`"
    assert sum(line.startswith("Date:") for line in lines) == 1
    text = "\n".join(lines)
    assert "`0123456789ab`" in text and "distilbench 0.1.0; python 3.11.9; torch 2.13.0" in text
    assert "35 runs in 12 cells" in text
    cells = read_csv(tmp_path / "r" / "cells.csv")
    assert len(cells) == 12 and len({c["config_hash"] for c in cells}) == 12
    assert all(f"`{c['config_hash']}`" in text for c in cells)
    att = next(c for c in cells if c["task"] == "mrpc" and c["objective"] == "att-kl" and c["init"] == "layers:4,8,12")
    assert att["n"] == "2" and att["seeds"] == "0 1"
    values = [float(x) for x in att["scores"].split()]
    assert float(att["mean"]) == pytest.approx(sum(values) / 2, abs=1e-4)
    assert float(att["std"]) == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-4)


# --------------------------------------------------------------------------- command line


def test_report_command(store_rows, tmp_path, capsys):
    results = tmp_path / "results.sqlite"  # the store behind store_rows
    out = tmp_path / "cli-report"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "att-kl" in printed and "report written to" in printed
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert f"Command: `distilbench report --results {results} --out {out}`" in readme
    assert (out / "cells.csv").exists() and (out / "comparisons.csv").exists()


def test_report_command_rebuilds_a_suite_report_exactly(store_rows, tmp_path, monkeypatch, capsys):
    """A suite writes its report with its own title, order and command line; the report's `Rebuild:` command
    (`distilbench report DIR`) must give back the same files, except the Date line."""
    monkeypatch.chdir(tmp_path)  # the store behind store_rows is tmp_path/results.sqlite: use relative paths
    suite_cmd = "distilbench suite benchmarks/x.yaml --results results.sqlite"
    orders = {"tasks": ["rte", "mrpc"], "objectives": ["none", "att-kl", "kd"], "inits": ["layers:1,2,3"]}
    build_report(store_rows, "reports/x", command=suite_cmd, results="results.sqlite", title="x (cpu scale): a suite",
                 orders=orders)
    first = {p.name: p.read_bytes() for p in sorted(Path("reports/x").iterdir())}
    readme = first["README.md"].decode().splitlines()
    assert readme[0] == "# x (cpu scale): a suite" and readme[2] == f"Command: `{suite_cmd}`"
    assert readme[4] == "Rebuild: `distilbench report reports/x`"
    assert main(["report", "reports/x"]) == 0
    second = {p.name: p.read_bytes() for p in sorted(Path("reports/x").iterdir())}
    assert sorted(second) == sorted(first) and "report.json" in second
    for name in first:
        if name == "README.md":
            assert without_date(second[name].decode()) == without_date(first[name].decode())
        else:
            assert second[name] == first[name], f"{name} differs after the rebuild"
    # a report.json naming another results file is not reused: a fresh report with the command that made it
    assert main(["report", "--results", str(tmp_path / "results.sqlite"), "--out", "reports/x"]) == 0
    text = Path("reports/x/README.md").read_text(encoding="utf-8")
    assert text.startswith("# distilbench report") and f"Command: `distilbench report --results {tmp_path}" in text


def test_report_without_results_is_one_line(tmp_path, capfd):
    missing = tmp_path / "nothing.sqlite"
    assert main(["report", "--results", str(missing), "--out", str(tmp_path / "r")]) == 2
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("distilbench: error: no results file at")
    assert not missing.exists() and not (tmp_path / "r").exists()
    empty = tmp_path / "empty.sqlite"
    ResultsStore(empty).close()
    assert main(["report", "--results", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "nothing to report" in capfd.readouterr().err


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (Path(__file__).parents[1] / "reports").glob("*/report.json")))
def test_committed_reports_rebuild_exactly(name, tmp_path, monkeypatch):
    """Each committed report (reports/NAME with its results store) is what its Rebuild: command writes today."""
    import shutil

    committed = Path(__file__).parents[1] / "reports" / name
    # what git holds: not the -wal/-shm files that any sqlite3 read of the store leaves beside it (gitignored)
    stray = shutil.ignore_patterns("*-wal", "*-shm", "*-journal")
    shutil.copytree(committed, tmp_path / "reports" / name, ignore=stray)
    monkeypatch.chdir(tmp_path)
    readme = (committed / "README.md").read_text(encoding="utf-8")
    rebuild = next(line for line in readme.splitlines() if line.startswith("Rebuild: "))
    argv = rebuild.removeprefix("Rebuild: `distilbench ").removesuffix("`").split()
    assert argv[:1] == ["report"] and main(argv) == 0
    builder = "- **Report built with:**"
    for path in sorted(committed.iterdir()):
        new = (tmp_path / "reports" / name / path.name).read_bytes()
        if path.name == "README.md":
            keep = [line for line in without_date(readme) if not line.startswith(builder)]
            assert [line for line in without_date(new.decode()) if not line.startswith(builder)] == keep
        elif path.suffix in (".csv", ".json", ".sqlite", ".md"):
            assert new == path.read_bytes(), f"reports/{name}/{path.name} differs from its rebuild"
        elif path.suffix == ".png" and f"matplotlib {__import__('matplotlib').__version__}," in readme:
            assert new == path.read_bytes(), f"reports/{name}/{path.name} differs from its rebuild"


def test_the_plots_floor_line_is_named_by_what_it_is_majority_class_or_the_qa_floor():
    """Issue 20: a QA score plot's dotted floor is the question-blind floor, not a "majority class"."""
    from types import SimpleNamespace

    from distilbench.report.plots import _reference_lines
    from distilbench.report.plotting import pyplot

    def cell(floor, value):
        return SimpleNamespace(teacher_scores=[80.0], chance=SimpleNamespace(applies=True, majority=value, floor=floor))

    plt = pyplot()
    for cells, want in (([cell("majority class", 50.8)] * 2, ["teacher", "majority class"]),
                        ([cell("question-blind floor (first sentence)", 6.1)], ["teacher", "question-blind floor (first sentence)"]),
                        ([cell("majority class", 50.8), cell("majority class", 52.7)], ["teacher"])):  # two floors: none drawn
        fig, ax = plt.subplots()
        _reference_lines(ax, cells)
        assert ax.get_legend_handles_labels()[1] == want
        plt.close(fig)


def test_significance_arrows_point_to_the_better_side_for_a_lower_is_better_score():
    """Perplexity: the row with the lower mean is the better one and reads ↑ (a classification row reads ↑ when its
    mean is higher); the detectable difference is in perplexity, not points."""
    from types import SimpleNamespace as NS

    from distilbench.report.format import arrow
    from distilbench.report.tables import detectable_line, significance_grid

    assert (arrow(-2.0, higher_is_better=False), arrow(2.0, higher_is_better=False), arrow(2.0)) == ("↑", "↓", "↑")
    for hib, row_kd in ((False, "↑ 0.010"), (True, "↓ 0.010")):
        cell = NS(higher_is_better=hib)
        kd, none = NS(a_cell=cell, scores={0: 170.0, 1: 171.0}), NS(a_cell=cell, scores={0: 180.0, 1: 178.0})
        cmp = NS(a="kd", b="none", holm_p=0.01, a_cell=cell, b_cell=none.a_cell,
                 result=NS(mean_diff=-8.5, mismatched_seeds=False, n=2))
        grid = significance_grid("t", [cmp], ["kd", "none"])
        assert grid.rows[0][2] == row_kd and grid.rows[1][1] == ("↓ 0.010" if row_kd.startswith("↑") else "↑ 0.010")
        cmp.a_cell, cmp.b_cell = NS(higher_is_better=hib, scores=kd.scores), NS(scores=none.scores)
        assert ("perplexity**" in detectable_line([cmp])) is (not hib)


def test_settings_heading_names_a_cells_own_settings_by_its_label_not_its_task():
    """A setting of one cell (TED's beta in ted-table3) is listed under that cell, not as if it held for the task;
    one that the cell's label already names is not repeated; cells with the same own settings are named together."""
    from types import SimpleNamespace as Cell

    from distilbench.report.tables import settings_heading

    common = {("epochs", 2.0)}
    cells = [Cell(task="squad", label="none", settings=frozenset(common)),
             Cell(task="squad", label="ted", settings=frozenset(common | {("beta", 10.0)})),
             Cell(task="squad", label="ted [beta=1.0]", settings=frozenset(common | {("beta", 1.0)})),
             Cell(task="squad", label="skd", settings=frozenset(common | {("theta_lr", 0.001)})),
             Cell(task="squad", label="avgkd", settings=frozenset(common | {("theta_lr", 0.001)}))]
    assert settings_heading(cells) == "epochs=2.0; avgkd, skd: theta_lr=0.001; ted: beta=10.0"
    two_tasks = [Cell(task="rte", label="kd", settings=frozenset({("epochs", 2.0), ("max_length", 128)})),
                 Cell(task="mrpc", label="kd", settings=frozenset({("epochs", 2.0)}))]
    assert settings_heading(two_tasks) == "epochs=2.0; rte: max_length=128"


def test_the_header_states_each_lm_tasks_window_and_stride_from_its_rows():
    """Issue 21: a perplexity report says how it was measured, from the stored rows, one line per distinct setting."""
    from distilbench.report.build import _lm_evaluation

    def row(task, length, stride, windows, tokens):
        return {"task": task, "extra": {"lm": {"eval_max_length": length, "eval_stride": stride, "windows": windows,
                                               "tokens": tokens}}}

    rows = [row("wikitext2", 128, 64, 5100, 323743), row("wikitext2", 128, 64, 5100, 323743), {"task": "rte"}]
    assert _lm_evaluation(rows) == [
        "- **Evaluation `wikitext2`:** perplexity = exp(mean next-token NLL) over the whole test text, windows of 128 "
        "tokens every 64 (sliding: every scored token has at least 64 tokens of context); 5,100 windows, 323,743 "
        "tokens scored"]
    assert len(_lm_evaluation([*rows, row("wikitext2", 128, 128, 2550, 323743)])) == 2
    assert _lm_evaluation([{"task": "rte", "extra": {}}]) == []

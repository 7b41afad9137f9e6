"""`distilbench report DIR`: a report folder rebuilds itself exactly from its report.json, wherever it now lies.

The report comes from a real tiny run (kd and the none baseline, 2 seeds), its results store kept inside the report
folder as committed reports keep theirs. Every file of the rebuilt copy is compared byte for byte with the original,
the README apart from its Date line; PNGs too, byte for byte: the plots carry no timestamps and both builds run
on the same machine with the same matplotlib.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distilbench.cli import main
from distilbench.cli.report import stored_results
from distilbench.report.build import build_report
from distilbench.results.store import ResultsStore


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_store(tiny_teacher, glue_dir, tmp_path_factory) -> Path:
    """A results store written by a real tiny `distilbench run`, shared by the tests below (each copies it)."""
    store = tmp_path_factory.mktemp("run") / "results.sqlite"
    argv = ["run", "--objective", "kd", "--seeds", "2", "--teacher", str(tiny_teacher), "--task", "rte",
            "--data-dir", str(glue_dir), "--max-train-examples", "48", "--max-eval-examples", "24", "--epochs", "1",
            "--teacher-epochs", "1", "--batch-size", "8", "--results", str(store), "--no-progress"]
    assert main(argv) == 0
    return store


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def without_date(readme: bytes) -> list[str]:
    lines = readme.decode("utf-8").splitlines()
    dates = [line for line in lines if line.startswith("Date: ")]
    assert len(dates) == 1
    return [line for line in lines if not line.startswith("Date: ")]


def assert_same_report(rebuilt: dict[str, bytes], original: dict[str, bytes]) -> None:
    assert sorted(rebuilt) == sorted(original)
    for name, data in original.items():
        if name == "README.md":
            assert without_date(rebuilt[name]) == without_date(data)
        else:
            assert rebuilt[name] == data, f"{name} differs after the rebuild"


def suite_like_report(tiny_store: Path, root: Path) -> Path:
    """reports/tiny under ``root``, built as a suite builds its report: its own title, order, command and the
    per-example tests, with the results store inside the folder (named relative to ``root``, as a suite run there
    names it)."""
    folder = root / "reports" / "tiny"
    folder.mkdir(parents=True)
    shutil.copy(tiny_store, folder / "results.sqlite")
    with ResultsStore(folder / "results.sqlite") as store:
        rows = store.rows()
    build_report(rows, folder, command="distilbench suite benchmarks/tiny.yaml --results reports/tiny/results.sqlite",
                 results="reports/tiny/results.sqlite", title="tiny (cpu scale): kd against the baseline",
                 orders={"tasks": ["rte"], "objectives": ["kd", "none"], "inits": ["layers:1,2,3"]}, per_example=200,
                 folder="reports/tiny")
    return folder


def test_a_copy_elsewhere_rebuilds_exactly(tiny_store, tmp_path, monkeypatch):
    original = suite_like_report(tiny_store, tmp_path / "checkout")
    first = files_of(original)
    assert {"README.md", "report.json", "cells.csv", "comparisons.csv", "per_example.csv", "results.sqlite",
            "scores-rte.png", "significance-rte-objectives.png"} <= set(first)
    readme = first["README.md"].decode().splitlines()
    assert readme[0] == "# tiny (cpu scale): kd against the baseline"
    assert readme[4] == "Rebuild: `distilbench report reports/tiny`"
    assert json.loads(first["report.json"]) == {
        "command": "distilbench suite benchmarks/tiny.yaml --results reports/tiny/results.sqlite",
        "folder": "reports/tiny", "orders": {"inits": ["layers:1,2,3"], "objectives": ["kd", "none"], "tasks": ["rte"]},
        "per_example": 200, "results": "reports/tiny/results.sqlite", "title": "tiny (cpu scale): kd against the baseline"}

    # a copy in another place, the original gone: the copy's own store is what the rebuild reads
    copy = tmp_path / "elsewhere" / "deeper" / "copy-of-tiny"
    shutil.copytree(original, copy)
    shutil.rmtree(tmp_path / "checkout")
    monkeypatch.chdir(tmp_path / "elsewhere")
    for name in list(files_of(copy)):
        if name not in ("results.sqlite", "report.json"):
            (copy / name).unlink()  # the rebuild writes every other file anew
    assert main(["report", "deeper/copy-of-tiny"]) == 0
    assert_same_report(files_of(copy), first)

    # by an absolute path from yet another folder, and again over its own output
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(copy)]) == 0
    assert_same_report(files_of(copy), first)


def test_a_report_written_by_the_report_command_rebuilds_from_a_copy(tiny_store, tmp_path, monkeypatch):
    """`distilbench report --results R --out DIR` with R inside DIR, then `distilbench report COPY`."""
    monkeypatch.chdir(tmp_path)
    Path("reports/plain").mkdir(parents=True)
    shutil.copy(tiny_store, "reports/plain/results.sqlite")
    assert main(["report", "--results", "reports/plain/results.sqlite", "--out", "reports/plain"]) == 0
    first = files_of(Path("reports/plain"))
    assert "Rebuild: `distilbench report reports/plain`" in first["README.md"].decode().splitlines()
    shutil.copytree("reports/plain", "copy")
    shutil.rmtree("reports")
    assert main(["report", "copy"]) == 0
    assert_same_report(files_of(Path("copy")), first)


def test_a_store_outside_the_folder_is_read_where_it_was_named(tiny_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_store, "results.sqlite")
    assert main(["report", "--results", "results.sqlite", "--out", "reports/x"]) == 0
    first = files_of(Path("reports/x"))
    assert main(["report", "reports/x"]) == 0
    assert_same_report(files_of(Path("reports/x")), first)


@pytest.mark.parametrize("results, folder, expected", [
    ("reports/a/results.sqlite", "reports/a", "DIR/results.sqlite"),
    ("reports/a/sub/r.sqlite", "reports/a/", "DIR/sub/r.sqlite"),
    ("/abs/reports/a/results.sqlite", "/abs/reports/a", "DIR/results.sqlite"),
    ("results.sqlite", "reports/a", "results.sqlite"),  # outside the folder: as named, from the current folder
    ("reports/ab/results.sqlite", "reports/a", "reports/ab/results.sqlite"),  # a sibling folder is not inside
    ("../x/results.sqlite", "reports/a", "../x/results.sqlite"),
    ("/abs/results.sqlite", "reports/a", "/abs/results.sqlite"),  # absolute vs relative: cannot be compared
    ("reports/a/results.sqlite", None, "reports/a/results.sqlite"),  # a report.json from before "folder" was kept
])
def test_where_the_store_is_read(results, folder, expected):
    got = stored_results(Path("DIR"), {"results": results, **({"folder": folder} if folder is not None else {})})
    assert got == Path(expected)


def test_a_folder_without_report_json_is_one_line(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"distilbench: error: {tmp_path / 'empty' / 'report.json'} does not exist")
    assert "--results RESULTS --out DIR" in err[0]
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_missing_store_is_one_line_and_writes_nothing(tmp_path, capfd):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"command": "x", "results": "r/results.sqlite", "folder": "r"}))
    assert main(["report", str(folder)]) == 2
    err = capfd.readouterr().err.splitlines()
    assert err == [f"distilbench: error: no results file at {folder / 'results.sqlite'} (report.json's results "
                   f"'r/results.sqlite', folder 'r'); pass --results PATH --out {folder} instead"]
    assert sorted(p.name for p in folder.iterdir()) == ["report.json"]


def test_a_folder_and_results_together_are_refused(tmp_path, capfd):
    assert main(["report", str(tmp_path), "--results", "x.sqlite"]) == 2
    assert "not both" in capfd.readouterr().err

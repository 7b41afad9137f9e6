"""`distilbench export`: the saved student of one stored run (--save-students), its model card rewritten."""
from __future__ import annotations

from typing import Any


def add_parser(sub) -> None:
    export = sub.add_parser("export", allow_abbrev=False,
                            help="the saved student of one stored run (--save-students), its model card rewritten; trains nothing")
    export.add_argument("--results", default="runs/results.sqlite", help="SQLite results store (default: runs/results.sqlite)")
    export.add_argument("--run-key", required=True, help="the run's key (the run_key column of the store)")
    export.add_argument("--out", default=None, help="copy the student folder here (a new or empty folder); default: leave it "
                        "where the run saved it")


def main(args: dict[str, Any]) -> int:
    from ..training.export.students import export

    print(export(args["results"], args["run_key"], args["out"]))
    return 0


__all__ = ["add_parser", "main"]

"""`distilbench findings`: write the README's Findings table from the committed reports' claims (or, with --check,
fail when the README's table differs from what it would write)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("findings", allow_abbrev=False,
                       help="write the README's Findings table from reports/*/claims.csv (the computed verdicts)")
    p.add_argument("--readme", default="README.md", help="the file holding the table's markers (default README.md)")
    p.add_argument("--reports", default="reports", help="the folder of report folders (default reports)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when the table differs from the reports'")


def main(args: dict[str, Any]) -> int:
    from ..report.findings import render

    readme, reports = Path(args["readme"]), Path(args["reports"])
    if not readme.is_file() or not reports.is_dir():
        raise UsageError(f"need the README {readme} and the reports folder {reports}; run from the repository root")
    text = readme.read_text(encoding="utf-8")
    try:
        new = render(text, reports)
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0] + " (see distilbench.report.findings)") from None
    if args["check"]:
        if new != text:
            print(f"{readme}: the Findings table differs from the reports' claims; run `distilbench findings`")
            return 1
        return 0
    readme.write_text(new, encoding="utf-8")
    print(f"{readme}: Findings table written from {reports}/*/claims.csv")
    return 0

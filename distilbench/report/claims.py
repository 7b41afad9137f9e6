"""The claims section of a report and ``claims.csv``: each declared claim's computed verdict per task
(:mod:`distilbench.results.claims` decides; this module only writes)."""
from __future__ import annotations

import math
from pathlib import Path

from .csvs import write_csv
from .format import fcsv, fpcsv

CLAIMS_HEADER = ["id", "paper", "claim", "paper_numbers", "task", "better", "worse", "n", "better_mean", "worse_mean",
                 "diff", "ci_low", "ci_high", "p", "p_holm", "family_size", "detectable", "verdict", "reason", "examples", "revisions"]


def _mean(cell) -> float:
    return cell.stats["mean"] if cell is not None else math.nan


def _num(x: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.{digits}f}" if digits == 2 else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3g}"


def claims_section(results) -> list[str]:
    if not results:
        return []
    m = next((r.family_size for r in results if not r.across), 0)
    across = [r for r in results if r.across]
    across_text = (f" A claim tested on several tasks gets an **across tasks** row: its testable tasks combined by "
                   f"Stouffer's method (each task's seed-level t-test as a signed z, weights √n), Holm-corrected over the "
                   f"{across[0].family_size} across-task results; its Δ is the mean of the per-task Δ." if across else "")
    md = ["## Claims", "",
          f"Each claim's verdict is computed by `distilbench.results.claims.verdict` from the cells below: "
          f"**reproduced** / **contradicted** need every compared cell above chance and the seed-level paired t-test, "
          f"Holm-corrected over all {m} tested claim × task pairs of this report, below 0.05 in the claimed / the "
          f"opposite direction; a cell at chance, a first-token head on a mean-pooled model, or (for a distillation "
          f"claim) a teacher no better than its students makes a claim **not testable**; anything else is "
          f"**inconclusive**, read against the smallest difference the design could detect. The per-example bootstrap "
          f"(section 3.3) is shown beside the verdict, never as one. A claim whose cells were computed by more than one version "
          f"of the training path (its code fingerprint, or for older rows their git revision) is flagged in Why. Δ = claimed-better minus claimed-worse (for a "
          f"lower-is-better score, its sign flipped: Δ > 0 always means the claim's direction)." + across_text, "",
          "| Claim | Paper | Paper's numbers | Task | Cells | Δ (95% CI), n | Holm p | Verdict | Why | Per example |",
          "|---|---|---|---|---|---|---:|---|---|---|"]
    for r in results:
        c = r.claim
        if r.across:
            cells = f"{c.better.text()} vs {c.worse.text()} on {len(r.tasks)} task(s)"
            delta = f"mean {_num(r.diff)}, n={r.n}" if r.tasks else "n/a"
        elif r.better is None:
            cells, delta = f"{c.better.text()} vs {c.worse.text()}", "n/a"
        else:
            cells = f"{r.better.label} {_mean(r.better):.2f} vs {r.worse.label} {_mean(r.worse):.2f}"
            delta = f"{_num(r.diff)} ({_num(r.ci[0])} to {_num(r.ci[1])}), n={r.n}"
        md.append(f"| {c.id}: {c.claim} | {c.paper} | {c.paper_numbers or '-'} | {r.task} | {cells} | {delta} | "
                  f"{_p(r.p_holm)} | **{r.verdict}** | {r.reason} | {r.examples} |")
    return md + ["", "Also in `claims.csv`.", ""]


def write_claims_csv(out: Path, results) -> None:
    rows = []
    for r in results:
        c = r.claim
        rows.append([c.id, c.paper, c.claim, c.paper_numbers, r.task,
                     r.better.label if r.better is not None else c.better.text(),
                     r.worse.label if r.worse is not None else c.worse.text(), str(r.n), fcsv(_mean(r.better)),
                     fcsv(_mean(r.worse)), fcsv(r.diff), fcsv(r.ci[0]), fcsv(r.ci[1]), fpcsv(r.p), fpcsv(r.p_holm),
                     str(r.family_size), fcsv(r.detectable), r.verdict, r.reason, r.examples,
                     " ".join(sorted(set(r.revisions + (r.better.revisions if r.better is not None else ()) +
                                         (r.worse.revisions if r.worse is not None else ()))))])
    write_csv(out / "claims.csv", CLAIMS_HEADER, rows)

"""Section 6 of a report, for AutoSKD runs only: the learned categorical distribution θ over the teachers after phase
1, after phase 2 and the chosen candidate, mean ± std over seeds, as a table and a bar chart per task and
configuration (paper 003, Figure 2)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .format import extra_of, slug
from .plotting import pyplot as _plt
from .plotting import save as _save

INTRO = ["## 6. AutoSKD: learned categorical distributions", "",
         "θ per teacher after phase 1, after phase 2 (Eq. 8 selection in between) and the chosen candidate "
         "(best on the selection split), mean ± std over seeds.", ""]


def theta_groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """{(task, config hash): the objective reports of its AutoSKD rows that recorded θ}."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        rep = extra_of(r).get("objective_report") or {}
        if r.get("objective") == "autoskd" and rep.get("theta_phase1"):
            groups.setdefault((r["task"], r["config_hash"]), []).append(rep)
    return groups


def theta_stats(reps: list[dict]) -> dict[str, tuple]:
    """{series: (mean per teacher, std per teacher)} for phase 1, phase 2 and the chosen candidate (where stored)."""
    team = reps[0]["team"]
    series = {"phase 1": [r["theta_phase1"] for r in reps], "phase 2": [r["theta_phase2"] for r in reps],
              "chosen": [r["theta"] for r in reps if r.get("theta")]}
    return {k: (np.mean(v, axis=0), np.std(v, axis=0, ddof=1) if len(v) > 1 else np.zeros(len(team)))
            for k, v in series.items() if v}


def theta_table(task: str, config_hash: str, reps: list[dict], stats: dict[str, tuple], rule: str = "") -> list[str]:
    team = reps[0]["team"]
    md = [f"### {task}{', θ update ' + rule if rule else ''}, config `{config_hash}` ({len(reps)} seeds, m = {reps[0].get('m')})", "",
          "| Teacher | " + " | ".join(stats) + " |", "|---|" + "---:|" * len(stats)]
    for j, name in enumerate(team):
        md.append(f"| `{name}` | " + " | ".join(f"{m[j]:.3f} ± {sd[j]:.3f}" for m, sd in stats.values()) + " |")
    return md


def plot_theta(path: Path, task: str, team: list[str], stats: dict[str, tuple], seeds: int, rule: str = "") -> None:
    """Bars: θ per teacher, one bar per series, whiskers ± 1 std over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2.8 + 1.3 * len(team), 3.2))
    width = 0.8 / len(stats)
    x = np.arange(len(team))
    for k, (label, (m, sd)) in enumerate(stats.items()):
        ax.bar(x + (k - (len(stats) - 1) / 2) * width, m, width, yerr=sd, capsize=3, label=label)
    ax.set_xticks(x, [Path(t).name if "/" in t else t for t in team], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("θ")
    top = max([1.0] + [float(a + b) for m, sd in stats.values() for a, b in zip(m, sd)])
    ax.set_ylim(0, 1.02 * top)  # θ ≤ 1, but a whisker of mean + std may pass 1: the axis keeps it whole
    ax.set_title(f"AutoSKD θ on {task}{' (' + rule + ')' if rule else ''}: bar = mean, whisker = ± 1 std "
                 f"over {seeds} seeds", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)  # outside the bars
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def theta_section(rows: list[dict], out: Path) -> tuple[list[str], list[Path]]:
    """AutoSKD runs: θ after phase 1, after phase 2 and the chosen candidate per teacher, mean ± std over seeds, as a
    table and a bar chart per task and configuration (paper 003, Figure 2). Nothing without AutoSKD rows."""
    groups = theta_groups(rows)
    if not groups:
        return [], []
    md, files = list(INTRO), []
    per_task: dict[str, int] = {}
    for (task, config_hash), reps in sorted(groups.items()):
        stats = theta_stats(reps)
        rule = (reps[0].get("theta_update") or "").upper()  # SSWO or CR; "" in rows stored before it was recorded
        md += theta_table(task, config_hash, reps, stats, rule)
        per_task[task] = per_task.get(task, 0) + 1
        name = f"theta-{slug(task)}" + (f"-{per_task[task]}" if per_task[task] > 1 else "") + ".png"
        plot_theta(out / name, task, reps[0]["team"], stats, len(reps), rule)
        files.append(out / name)
        md += ["", f"![AutoSKD theta on {task}{' (' + rule + ')' if rule else ''}]({name})", ""]
    return md, files


__all__ = ["theta_section"]

"""Running a suite's cells (:mod:`distilbench.suite`): one after another in this process, or every cell's pending runs
in one pool of workers (``--workers N``); cells with runs another process holds are waited for at the end."""
from __future__ import annotations

from rich.markup import escape  # a cell label such as "ted [beta=1.0]" is text, not console markup

from ..config import RunConfig
from ..errors import TrainingDiverged
from ..training import families
from ..training.runs.workers import resolve, run_jobs


def run_cells(cells: list[tuple[str, RunConfig]], console) -> tuple[list[list[dict]], list[str]]:
    """Cell by cell in this process; cells with runs another worker was training are waited for after every other
    cell. Returns each finished cell's rows, in cell order, and the cells that diverged."""
    by_cell: dict[int, list[dict]] = {}
    held: list[int] = []  # cells with runs another worker was training: waited for after every other cell
    failed: list[str] = []
    for i, (label, cfg) in enumerate(cells, start=1):
        console.print(f"[bold]cell {i}/{len(cells)}[/]: {escape(label)}, seeds {cfg.seed_list}")
        try:
            cell = families.make_runner(cfg, console=console)
            by_cell[i] = cell.run(wait=False)
        except TrainingDiverged as exc:
            failed.append(f"{label}: {exc}")
            console.print(f"[bold red]cell {escape(label)} diverged: {exc}; going on with the next cell[/]")
            continue
        if cell.held:
            held.append(i)
    for i in held:
        label, cfg = cells[i - 1]
        console.print(f"[bold]cell {i}/{len(cells)}[/]: {escape(label)}: runs other workers were training")
        try:
            by_cell[i] = families.make_runner(cfg, console=console).run()
        except TrainingDiverged as exc:
            failed.append(f"{label}: {exc}")
            console.print(f"[bold red]cell {escape(label)} diverged: {exc}[/]")
    return [by_cell[i] for i in sorted(by_cell)], failed


def run_pooled(cells: list[tuple[str, RunConfig]], console) -> tuple[list[list[dict]], list[str]]:
    """--workers N in a suite: each cell's teacher, caches and shared stages first, cell by cell in this process;
    then every cell's pending runs in one pool of workers; then each cell's stored rows."""
    prepared, jobs, owners = [], [], []
    for i, (label, cfg) in enumerate(cells, start=1):
        console.print(f"[bold]cell {i}/{len(cells)}[/]: {escape(label)}, seeds {cfg.seed_list}: teacher and shared parts")
        r = families.make_runner(cfg, console=console)
        record, todo = r.pending()
        if todo:
            jobs += r.jobs(todo, record, r.teacher_net(record))
            owners += [(r, record)] * len(todo)
        prepared.append((r, record, bool(todo)))
    failed: list[str] = []
    if jobs:
        processes, threads = resolve(cells[0][1].workers, len(jobs))
        for r, record, pending in prepared:  # latency with the workers' thread count, timed before they start (cached)
            if pending:
                r.profile_models(record, threads=threads)
        outcome = run_jobs(jobs, processes, threads, console.print)
        failed = outcome["diverged"] + outcome["failed"] + [f"{x}: its worker died" for x in outcome["lost"]]
        held: dict[int, list] = {}  # runs another process sharing the store was training, by cell
        for k in outcome["held"]:
            held.setdefault(id(owners[k][0]), []).append(k)
        for ks in held.values():
            r, record = owners[ks[0]]
            try:
                r.finish_held([(r.plan.objectives[jobs[k].objective], jobs[k].seed) for k in ks], record, r.teacher_net(record))
            except TrainingDiverged as exc:
                failed.append(str(exc))
    out = []
    for r, record, _ in prepared:
        out.append(r.rows(record))
        r.plan.store.close()
    return out, failed


__all__ = ["run_cells", "run_pooled"]

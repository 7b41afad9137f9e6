"""`--workers N`: independent student runs in N processes on one machine, torch's threads shared out among them.

A *job* is one (configuration, objective, seed) run. Before any worker starts, the calling process has fine-tuned
every teacher and built everything the runs share (teacher-output caches, TED's Stage I: :meth:`Runner.prepare`), so
a worker only reads them. Workers are spawned (not forked: a forked process inherits torch's thread pools in an
undefined state), each with ``threads`` intra-op threads, and take jobs from one queue: a worker that finishes
early takes the next job, and a worker that dies (SIGKILL, out of memory) loses only the run it was training. Each
worker claims its run's lease and writes its row to the results store itself (a row is one transaction), so a
rerun skips every finished run and completes the rest, and a run that another process sharing the store is
training is handed back to the caller as held (:meth:`Runner.finish_held` waits for it).

Why processes, on a CPU: a 3-layer student's matmuls are small (batch 16 × ~60 tokens × 768), so two threads on
one run keep the cores busy less of the time than one thread on each of two runs. The thread count changes the
order of float reductions, so a run's scores under another thread count can differ in the last digits.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch
from rich.console import Console

from ...allocator import release, tune
from ...config import RunConfig
from ...errors import TrainingDiverged
from ...hashing import stable_hash

DONE, DIVERGED, FAILED, HELD = "done", "diverged", "failed", "held"  # HELD: another process sharing the store has it


@dataclass(frozen=True)
class Job:
    config: dict[str, Any]  # RunConfig fields (validated)
    objective: int  # index into the runner's plan.objectives
    seed: int
    label: str
    precision: str = "fp32"  # resolved once, by the parent: every run of a configuration computes alike
    runner: Any = None  # the parent's runner class (its task family's: distilbench.training.families), rebuilt here


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve(workers: str | int, jobs: int, accelerator: bool = False) -> tuple[int, int]:
    """(processes, threads per process) for ``--workers`` given the number of jobs.

    ``N``: N processes (never more than the jobs), the cores shared out evenly. ``auto``: 1 on an accelerator (one
    device); on a CPU, one single-thread process per core (benchmarks/workers.py measured it faster)."""
    n_cores = cores()
    if str(workers) == "auto":
        n = 1 if accelerator else n_cores
    else:
        n = int(workers)
    n = max(1, min(n, jobs))
    return n, max(1, n_cores // n)


def run_jobs(jobs: list[Job], processes: int, threads: int, log: Callable[[str], None]) -> dict[str, list]:
    """Run ``jobs`` in ``processes`` spawned workers; returns the labels of the jobs that diverged or failed, and of
    those lost with a worker that died, and the indices of those another process sharing the store was training
    ({"diverged": [...], "failed": [...], "lost": [...], "held": [k, ...]})."""
    ctx = mp.get_context("spawn")
    todo, results = ctx.Queue(), ctx.Queue()
    for k, job in enumerate(jobs):
        todo.put((k, job))
    for _ in range(processes):
        todo.put(None)
    log(f"{len(jobs)} run(s) in {processes} worker process(es) × {threads} thread(s)")
    procs = start_processes(_worker, [(w, todo, results, threads) for w in range(processes)], threads)
    outcome: dict[str, list] = {DIVERGED: [], FAILED: [], "lost": [], HELD: []}
    started: dict[int, int] = {}  # job -> worker, until it ends
    ended: set[int] = set()
    alive = set(range(processes))
    while alive:
        try:
            kind, k, w, message = results.get(timeout=1.0)
        except queue_mod.Empty:
            for w in sorted(alive):
                if not procs[w].is_alive():
                    alive.discard(w)
                    lost = [k for k, owner in started.items() if owner == w and k not in ended]
                    if procs[w].exitcode not in (0, None) or lost:
                        log(f"[bold red]worker {w} exited with code {procs[w].exitcode}[/]"
                            + (f": lost {', '.join(jobs[k].label for k in lost)} (rerun to train it)" if lost else ""))
                    outcome["lost"] += [jobs[k].label for k in lost]
                    ended.update(lost)
            continue
        if kind == "start":
            started[k] = w
            continue
        ended.add(k)
        if kind == HELD:
            outcome[HELD].append(k)
        elif kind != DONE:
            outcome[kind].append(f"{jobs[k].label}: {message}")
            log(f"[bold red]{jobs[k].label} {kind}: {message}[/]")
    for p in procs:
        p.join()
    return outcome


def start_processes(target: Callable, args: list[tuple], threads: int) -> list:
    """Start one spawned daemon process per entry of ``args`` running ``target(*entry)``, each with ``threads`` torch
    threads (OMP/MKL set for the spawned interpreter, which reads them at start; restored here after)."""
    release()  # this process waits from now on: the heap it freed (teacher, caches) goes back before workers need it
    ctx = mp.get_context("spawn")
    old = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: str(threads) for k in old})
    try:
        procs = [ctx.Process(target=_start, args=(target, *entry), daemon=True) for entry in args]
        for proc in procs:
            proc.start()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return procs


def _start(target: Callable, *args) -> None:
    """A spawned process's first step: the allocator's settings (distilbench.allocator), then its work."""
    tune()
    target(*args)


def exit_with_parent(interval_s: float = 2.0) -> None:
    """End this process when the one that started it is gone. A parent killed by a signal never terminates its
    ``daemon`` children (that happens at its normal exit only), and an orphaned worker would go on training and
    writing rows beside the rerun that is meant to take over (found when a stopped suite's workers ran on)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:  # re-parented: the parent has died
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker(index: int, todo, results, threads: int) -> None:
    """One worker process: runners are built once per configuration and reused for its later jobs."""
    exit_with_parent()
    torch.set_num_threads(threads)
    console = Console(stderr=True)
    current: tuple = ("", None)  # (config key, (runner, record, teacher net)): jobs come cell by cell, so one at a time
    while True:
        item = todo.get()
        if item is None:
            break
        k, job = item
        results.put(("start", k, index, ""))
        try:
            key = stable_hash([job.config, job.precision])
            if current[0] != key:
                current = ("", None)  # release the previous cell's teacher first
                cfg = RunConfig(**{**job.config, "progress": False}).validate()
                runner = job.runner(cfg, console=Console(stderr=True, quiet=True), precision=job.precision)
                record = runner.teacher()  # cached by the parent: loaded, not trained
                runner.prepare_team()
                runner.console = console
                current = (key, (runner, record, runner.teacher_net(record)))
            runner, record, teacher_net = current[1]
            status = runner.run_and_store(runner.plan.objectives[job.objective], job.seed, record, teacher_net,
                                          prefix=f"w{index}: ")
            results.put((HELD if status == HELD else DONE, k, index, ""))
        except TrainingDiverged as exc:
            results.put((DIVERGED, k, index, str(exc)))
        except Exception as exc:  # reported by the parent; the worker goes on with the next job
            results.put((FAILED, k, index, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"))

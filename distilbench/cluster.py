"""Handing a suite's or a search's workers to a Slurm cluster: ``--launcher slurm --jobs N`` submits a job array of N
tasks through submitit, each running the same command with ``--launcher local`` against the shared store, and returns.

Each array task is an ordinary worker: it claims runs (a suite) or trials (a search) through the store's leases, so N
tasks divide the grid without talking to each other; a task that is preempted, cancelled or killed loses only the
run it held, whose lease expires for another task to take over (``--slurm-requeue`` puts a preempted or timed-out
task back in the queue). The tasks write no report: ``distilbench report --results STORE`` builds a suite's from the
store at any time, and a search's report is written by rerunning the search command locally once its trials are
done. A shared store must be PostgreSQL: SQLite's locking over a network file system is unsafe, and the compute
nodes must reach the store. Slurm options come from flags or the suite's ``slurm:`` block (flags win).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import UsageError
from .results.backends import is_url

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class SlurmOptions:
    """What each array task asks of Slurm. ``extra``: sbatch options as ``--name=value`` (or ``--flag``);
    ``setup``: shell lines run before the task (``module load ...``, ``source venv/bin/activate``)."""

    partition: str | None = None
    time: int = 240  # minutes
    cpus: int = 2
    mem_gb: float | None = None
    gpus: int = 0
    account: str | None = None
    extra: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    requeue: bool = False
    logs: str | None = None  # where submitit keeps each task's script, stdout and stderr

    def executor_parameters(self) -> dict[str, Any]:
        """submitit.SlurmExecutor's parameters."""
        extra: dict[str, Any] = {}
        for item in self.extra:
            name, _, value = item.removeprefix("--").partition("=")
            extra[name.replace("-", "_")] = value if value else True
        params: dict[str, Any] = {"time": self.time, "cpus_per_task": self.cpus, "additional_parameters": extra,
                                  "setup": list(self.setup), "signal_delay_s": 120}
        if self.partition:
            params["partition"] = self.partition
        if self.mem_gb:
            params["mem"] = f"{int(self.mem_gb * 1024)}M"
        if self.gpus:
            params["gpus_per_task"] = self.gpus
        if self.account:
            params["account"] = self.account
        return params


# YAML / flag name (a SlurmOptions field) -> (type, meaning used in the error line)
_KEYS = {"partition": (str, "a partition name"), "time": (int, "minutes, >= 1"), "cpus": (int, "CPUs per task, >= 1"),
         "mem_gb": (float, "GB per task, > 0"), "gpus": (int, "GPUs per task, >= 0"), "account": (str, "an account name"),
         "extra": (list, "sbatch options such as --qos=high"), "setup": (list, "shell lines"),
         "requeue": (bool, "true or false"), "logs": (str, "a folder")}


def slurm_options(block: Mapping[str, Any] | None, flags: Mapping[str, Any], where: str = "slurm") -> SlurmOptions:
    """The suite's ``slurm:`` block overridden by the flags that were given (None = not given); every value checked
    against its meaning, one line naming the bad one and what is accepted."""
    merged: dict[str, Any] = {}
    for source, values in ((where, block or {}), ("--slurm-*", flags)):
        if not isinstance(values, Mapping):
            raise UsageError(f"{source}: must be a mapping of {', '.join(_KEYS)}")
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in _KEYS:
                raise UsageError(f"{source}: unknown option {key!r}; accepted: {', '.join(_KEYS)}")
            if value is not None and value != () and value != []:
                merged[name] = value
    out: dict[str, Any] = {}
    for name, value in merged.items():
        kind, meaning = _KEYS[name]
        bad = UsageError(f"slurm {name} {value!r}: expected {meaning}")
        if kind is list:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
                raise bad
            if name == "extra" and not all(v.startswith("--") for v in value):
                raise bad
            out[name] = tuple(value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise bad
            out[name] = value
        elif kind is str:
            if not isinstance(value, str) or not value.strip():
                raise bad
            out[name] = value
        else:
            try:
                number = kind(value)
            except (TypeError, ValueError):
                raise bad from None
            if isinstance(value, bool) or number != number or (name == "gpus" and number < 0) or \
                    (name != "gpus" and (number <= 0 if name == "mem_gb" else number < 1)):
                raise bad
            out[name] = number
    return SlurmOptions(**out)


MEM_MARGIN = 1.25  # over the largest run measured: runs of one cell differ, and a task may also fine-tune a teacher


def measured_mem_gb(report: Path) -> tuple[float, float] | None:
    """Memory to ask per array task from a committed report of the same suite and scale: the largest resident peak
    of its runs (``peak_mem_mb``, each worker process's own) × MEM_MARGIN, rounded up to 0.5 GB; with that peak in
    MiB. None when the report has no store or no measured run."""
    store = Path(report) / "results.sqlite"
    if not store.is_file():
        return None
    # a plain connection, closed at once: a read-only one would leave the WAL's side files in the report folder
    with contextlib.closing(sqlite3.connect(store)) as con:
        try:
            peak = con.execute("select max(peak_mem_mb) from runs").fetchone()[0]
        except sqlite3.Error:
            return None
    if not peak or peak <= 0:
        return None
    return math.ceil(peak * MEM_MARGIN / 1024 * 2) / 2, float(peak)


def default_memory(options: SlurmOptions, report: Path) -> tuple[SlurmOptions, str]:
    """``options`` with ``mem_gb`` from the committed report (:func:`measured_mem_gb`) where neither a flag nor the
    suite's ``slurm:`` block set it, and the line that says where the figure came from."""
    if options.mem_gb:
        return options, f"memory per array task: {options.mem_gb:g} GB (given)"
    measured = measured_mem_gb(report)
    if measured is None:
        return options, (f"memory per array task: the partition's default (no measured runs in {report} to size it "
                         "from; --slurm-mem-gb sets it)")
    gb, peak = measured
    return (dataclasses.replace(options, mem_gb=gb),
            f"memory per array task: {gb:g} GB, the largest run in {report} ({peak:.0f} MiB resident) + "
            f"{round(100 * (MEM_MARGIN - 1))}% (--slurm-mem-gb overrides)")


def check_jobs(jobs: int | None, launcher: str) -> int:
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher {launcher!r}: accepted: {', '.join(LAUNCHERS)}")
    if launcher == "local":
        if jobs is not None:
            raise UsageError("--jobs is the size of a Slurm job array: give it with --launcher slurm")
        return 1
    if jobs is None or jobs < 1:
        raise UsageError(f"--jobs must be a count of array tasks >= 1 with --launcher slurm (got {jobs})")
    return jobs


def check_shared_store(location: str | Path, flag: str) -> None:
    """A store every array task reaches: PostgreSQL, never an SQLite file."""
    text = str(location)
    if not is_url(text) or text.startswith("sqlite"):
        raise UsageError(f"{flag} {text}: --launcher slurm needs a PostgreSQL store that every node reaches "
                         f"(postgresql://USER@HOST/DB); SQLite over a network file system is unsafe")


def local_argv(argv: Sequence[str]) -> list[str]:
    """The submitting command's arguments without the launcher's own flags: the same command, run here."""
    own = {"--launcher", "--jobs", *(f"--slurm-{k.replace('_', '-')}" for k in _KEYS)}
    switches = {"--slurm-requeue", "--no-slurm-requeue", "--report", "--no-report"}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in switches:
            continue
        if name in own:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def task_argv(argv: Sequence[str]) -> list[str]:
    """An array task's arguments: :func:`local_argv` with ``--no-report`` (the store is the output; a report is built
    from it once)."""
    return local_argv(argv) + ["--no-report"]


def run_task(argv: list[str]) -> None:
    """One array task: ``distilbench ARGV`` in a child process of this Python (the same installation); its exit
    status becomes the task's."""
    code = subprocess.run([sys.executable, "-m", "distilbench", *argv]).returncode
    if code != 0:
        raise RuntimeError(f"distilbench {shlex.join(argv)} exited with {code}")


def _requeueable():
    import submitit

    class RequeueTask(submitit.helpers.Checkpointable):
        """On preemption or timeout, submitit resubmits the task: the new one resumes from the store."""

        def __call__(self, argv: list[str]) -> None:
            run_task(argv)

    return RequeueTask()


@dataclass
class Submitted:
    job_ids: list[str] = field(default_factory=list)
    logs: Path = Path(".")


def submit(argv: Sequence[str], jobs: int, options: SlurmOptions, name: str, default_logs: Path) -> Submitted:
    """Submit ``jobs`` array tasks, each running ``distilbench`` with :func:`task_argv` of ``argv``; returns at once."""
    try:
        import submitit
    except ImportError:
        raise UsageError("--launcher slurm needs submitit: pip install 'distilbench[slurm]' (or pip install submitit)") from None
    logs = Path(options.logs) if options.logs else default_logs
    executor = submitit.SlurmExecutor(folder=logs / "%j", max_num_timeout=3 if options.requeue else 0)
    executor.update_parameters(job_name=f"distilbench-{name}", array_parallelism=jobs, **options.executor_parameters())
    fn = _requeueable() if options.requeue else run_task
    task = task_argv(argv)
    # sbatch's complaints reach our stderr (its own, and submitit's echo of them): caught, then said in one line
    with tempfile.TemporaryFile() as err, contextlib.redirect_stderr(io.StringIO()):
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            submitted = executor.map_array(fn, [task] * jobs)
        except (submitit.core.utils.FailedJobError, FileNotFoundError, OSError) as exc:
            err.seek(0)
            said = " ".join((str(exc) or err.read().decode(errors="replace")).split())
            raise UsageError(f"sbatch refused the array: {said[-400:] or type(exc).__name__}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return Submitted([j.job_id for j in submitted], logs)


def announce(done: Submitted, store: str, report_hint: str) -> str:
    """What the submitting command prints: the ids and how to follow the array."""
    array = done.job_ids[0].split("_")[0] if done.job_ids else "?"
    return (f"submitted Slurm array {array}: {len(done.job_ids)} task(s) ({', '.join(done.job_ids)})\n"
            f"  follow:  squeue -j {array}     logs: {done.logs}/\n"
            f"  cancel:  scancel {array}        store: {store}\n"
            f"  report:  {report_hint}   (any time; finished runs are in the store)")


__all__ = ["LAUNCHERS", "SlurmOptions", "Submitted", "announce", "check_jobs", "check_shared_store", "default_memory",
           "local_argv", "measured_mem_gb", "run_task", "slurm_options", "submit", "task_argv"]

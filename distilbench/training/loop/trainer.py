"""One training as the runner makes it: the harness's loop (:func:`distilbench.training.loop.harness.train`) with the run's
progress display, its time in shared stages, and a line for each stage read from its cache. The runner's students
and the teacher's fine-tuning (:class:`distilbench.training.teachers.inference.TeacherInference`) both train through it."""
from __future__ import annotations

from typing import Callable

from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from ...config import RunConfig
from ...data.batching import Encoded
from ...data.tasks import Task
from ...objectives import Objective
from .harness import SharedStages, TeacherSource, TrainResult


def progress_display(console: Console, label: str, named_stages: bool = False):
    """``(bar, update)``: a live bar (a terminal) or a line every 10% (a log), per stage; ``bar`` is None for lines.
    ``named_stages``: each stage's bar and lines say which stage they count (TED: "Stage I (filters)", then "Stage II
    (distil)"), since each starts at step 1."""

    def stage_label(stage) -> str:
        if not named_stages or stage is None:
            return label
        return f"{label}, {stage.title} ({stage.name})" if stage.title else f"{label}, {stage.name}"

    if not console.is_terminal:  # a log file or CI: a plain line every 10% instead of a live bar
        marks: set[tuple[str, int]] = set()

        def log_line(step, total, terms, speed, stage=None):
            name = stage_label(stage)
            mark = 10 * step // total
            if (name, mark) not in marks and (step == total or mark > 0):
                marks.add((name, mark))
                info = " ".join(f"{k}={v:.4f}" for k, v in terms.items())
                console.print(f"{name}: step {step}/{total} {info} {speed:.1f} ex/s", soft_wrap=True)

        return None, log_line
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=False)
    handles: dict[str, int] = {}

    def update(step, total, terms, speed, stage=None):
        name = stage_label(stage)
        if name not in handles:  # a new stage gets its own bar; the finished one stays on screen
            handles[name] = bar.add_task(name, total=None, info="")
        info = " ".join(f"{k}={v:.4f}" for k, v in terms.items()) + f" {speed:.1f} ex/s"
        bar.update(handles[name], completed=step, total=total, info=info)

    return bar, update


class Trainer:
    """Trains a model with an objective on the run's task, settings and accelerator, showing progress.

    ``loop`` is the training loop (:func:`harness.train`), handed in by the runner, whose module tests patch to stop
    or watch training; ``timings`` the runner's seconds per phase, of which shared stages trained here are "Stage I".
    """

    def __init__(self, cfg: RunConfig, task: Task, accelerator: Accelerator, console: Console,
                 log: Callable[[str], None], timings: dict[str, float], loop: Callable[..., TrainResult]):
        self.cfg, self.task, self.accelerator, self.console = cfg, task, accelerator, console
        self.log, self.timings, self.loop = log, timings, loop

    def __call__(self, model: nn.Module, objective: Objective, teacher: TeacherSource | None, train_enc: Encoded,
                 select_enc: Encoded, *, seed: int, epochs: float, lr: float, label: str,
                 teacher_train_enc: Encoded | None = None, shared: SharedStages | None = None, micro_batch: int = 0,
                 only_shared: bool = False) -> TrainResult:
        stages = objective.stages()
        bar, update = None, None
        if self.cfg.progress and self.accelerator.is_main_process:
            bar, update = progress_display(self.console, label, len(stages) > 1 or any(s.title for s in stages))
        if bar:
            bar.start()
        try:
            result = self.loop(model, objective, teacher, train_enc=train_enc, select_enc=select_enc, task=self.task,
                               cfg=self.cfg, seed=seed, accelerator=self.accelerator, epochs=epochs, lr=lr,
                               progress=update, teacher_train_enc=teacher_train_enc, shared=shared,
                               micro_batch=micro_batch, only_shared=only_shared)
        finally:
            if bar:
                bar.stop()
        if shared is not None:  # shared stages trained here (not read from their cache) count as "Stage I", not students
            self.timings["Stage I"] += sum(result.stage_times.get(s.name, 0.0) for s in stages if s.shared)
        for entry in result.history:
            if "cached" in entry:
                stage = next((s for s in stages if s.name == entry["stage"]), None)
                self.log(f"{label}: {stage.title + ' ' if stage and stage.title else ''}({entry['stage']}) "
                         f"read from its cache {entry['cached']}")
        return result

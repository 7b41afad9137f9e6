"""Task families, registered by the family name a task declares (``family:`` in ``registry/tasks/*.yaml``): each
family's runner, the :class:`.runner.Runner` (sentence classification and regression) or a subclass overriding its
family hooks (:class:`.qa_runner.QARunner`, :class:`.lm_runner.LMRunner`). Everything that builds a runner (the CLI,
suites, searches, worker processes) goes through :func:`make_runner`; a new family is one runner module and one line
here."""
from __future__ import annotations

from ...config import RunConfig
from ...data.tasks import Task, get_task
from ...plugins import Registry
from .lm_runner import LMRunner
from .qa_runner import QARunner
from ..runs.runner import Runner

RUNNERS: Registry[type[Runner]] = Registry("task family")
RUNNERS.register("sequence-classification", Runner)
RUNNERS.register("extractive-qa", QARunner)
RUNNERS.register("causal-lm", LMRunner)


def runner_class(task: Task) -> type[Runner]:
    return RUNNERS.get(task.family)


def make_runner(cfg: RunConfig, *args, **kwargs) -> Runner:
    """The runner of ``cfg.task``'s family, built with the :class:`.runner.Runner` arguments."""
    return runner_class(get_task(cfg.task))(cfg, *args, **kwargs)

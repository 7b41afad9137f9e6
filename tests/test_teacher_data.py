"""--teacher-max-train-examples: the teacher fine-tunes on a larger sample of the same fixed permutation, which holds
the students' sample (a teacher trained on more labelled data than its students); checked against its meaning."""
from __future__ import annotations

import pytest

from distilbench.config import RunConfig
from distilbench.errors import UsageError
from distilbench.training.runs.plan import plan_run
from distilbench.training.runs.runner import Runner
from distilbench.training.teachers.teacher import teacher_location


def _cfg(glue_dir, tmp_path, **kw):
    base = dict(task="rte", teacher="minilm-l6", data_dir=str(glue_dir), results=str(tmp_path / "r.sqlite"),
                max_train_examples=48)
    return RunConfig(**{**base, **kw}).validate()


def test_the_teachers_sample_holds_the_students_and_makes_another_teacher(glue_dir, tmp_path):
    small = plan_run(_cfg(glue_dir, tmp_path), Runner)
    big = plan_run(_cfg(glue_dir, tmp_path, teacher_max_train_examples=200), Runner)
    assert small.teacher_examples == small.train_all and len(big.teacher_examples) == 200
    assert big.train_all == small.train_all  # the students' data does not change
    ids = {e.idx for e in big.teacher_examples}
    assert {e.idx for e in big.train_all} <= ids
    key = lambda plan: teacher_location(plan.cfg, "minilm-l6", plan.task, plan.teacher_examples)[1]
    assert key(small) != key(big)


@pytest.mark.parametrize("kw, says", [
    (dict(teacher_max_train_examples=10), "a count of at least the students' --max-train-examples \\(48\\)"),
    (dict(teacher_max_train_examples=100, max_train_examples=None), "which must be given"),
])
def test_a_teacher_sample_smaller_than_the_students_is_refused(glue_dir, tmp_path, kw, says):
    with pytest.raises(UsageError, match=says):
        _cfg(glue_dir, tmp_path, **kw)

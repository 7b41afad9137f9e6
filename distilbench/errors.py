"""Errors that reach the user as one clear line and exit code 2."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: the CLI prints ``distilbench: error: <message>`` and exits with code 2.

    The message names what is wrong and what is accepted. Raising it must happen before anything is
    written to the results store, so a refused run leaves no partial results.
    """


class DataError(UsageError):
    """A data file is missing or malformed (a bad TSV row, a label outside the task's label list)."""


class TrainingDiverged(RuntimeError):
    """A NaN or infinite loss: training stops instead of storing a meaningless result."""

"""AutoSKD (paper 003, AutoSKDBERT): ``core`` holds the maths (Eq. 3-8, SSWO, CR, the one-step look-ahead, candidate
distributions); ``objective`` connects it to the harness as the objectives ``autoskd``, ``skd`` and ``avgkd``.

Importing this package registers the three objectives. May import what ``objectives`` may.
"""
from . import objective  # noqa: F401  (registers autoskd, skd, avgkd)

"""Report: the report folder written from stored rows (README tables, CSVs, plots).

- ``build``: text tables (``Grid``), table builders, CSVs, ``build_report``, the AutoSKD θ section;
- ``leaderboard``: size, speed, retained share and training cost per cell, and the Pareto plots;
- ``plotting``: matplotlib set up for byte-identical PNGs (used by ``search`` too).

May import: ``results``, ``data`` and the bottom layer (``config``, ``errors``, ``plugins``, ``hashing``); never
``training``, ``models`` or ``objectives``, so that ``distilbench report`` imports no torch.
"""

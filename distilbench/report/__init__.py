"""Report: the report folder written from stored rows (README tables, CSVs, plots).

- ``build``: ``build_report``: the README's header, then its sections in order, the CSVs and ``report.json``;
- ``sections``: the numbered README sections 1–5 (objectives × tasks, inits, significance, plots, cells);
- ``tables``: the table builders (objectives × tasks, objective × init, significance matrices, per-example tests)
  and the notes under them;
- ``format``: fixed-precision numbers and ``Grid``, a table as data and Markdown (`cli/` prints it on the terminal);
- ``plots``: score, init and significance figures, the Pareto plots per task;
- ``csvs``: ``cells.csv``, ``comparisons.csv``, ``per_example.csv``;
- ``theta``: section 6, AutoSKD's learned θ (AutoSKD runs only);
- ``leaderboard``: size, speed, retained share and training cost per cell, and the Pareto plots;
- ``plotting``: matplotlib set up for byte-identical PNGs (used by ``search`` too).

May import: ``results``, ``data`` and the bottom layer (``config``, ``errors``, ``plugins``, ``hashing``); never
``training``, ``models`` or ``objectives``, so that ``distilbench report`` imports no torch. Prints nothing: the
terminal tables are ``cli``'s.
"""

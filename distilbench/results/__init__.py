"""Results: the results store and the statistics computed from its rows.

- ``store``: the append-mostly table of finished runs (run keys, rows, leases); ``backends`` (SQLite, PostgreSQL)
  and ``leases`` (who is training which run) under it;
- ``rows``: store rows as dicts, the finished student runs among them, grouped by cell (the one grouping of
  ``stats`` and the report);
- ``stats``: cells, paired tests across seeds, Holm correction, orders;
- ``per_example``: paired tests over dev examples (bootstrap, McNemar);
- ``chance``: is a cell distinguishable from chance, and the smallest difference a design can detect;
- ``cost``: a row's training cost, its shared parts divided among the rows using them (report time).

May import: ``data`` and the bottom layer (``config``, ``errors``, ``plugins``, ``hashing``). No torch.
"""

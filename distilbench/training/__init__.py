"""Training: everything that turns a config into stored student rows.

- ``runner``: plans and validates a run, maps layer pairs, builds each seed's student, trains, scores and stores rows;
- ``harness``: the training loop itself (Accelerate), evaluation and prediction;
- ``teacher``: fine-tuning and caching a teacher, and its logits over the train file;
- ``teacher_cache``: the teacher-output cache (hidden states, attention) for layer objectives;
- ``workers``: ``--workers`` processes (spawned), one job per seed and objective;
- ``precision``: resolving ``--mixed-precision auto`` from a measured probe;
- ``profile``: a student's size and speed, recorded with each row;
- ``export``: the saved student of a stored run and its model card (``--save-students``, ``distilbench export``);
- ``cost``: recording the seconds of the parts a run shares (teacher, logits, outputs, shared stages); sharing them
  out at report time is :mod:`distilbench.results.cost`.

May import: ``objectives``, ``models``, ``data``, ``results`` and the bottom layer (``config``, ``errors``,
``plugins``, ``hashing``); never ``cli``, ``suite``, ``search`` or ``report``.
"""

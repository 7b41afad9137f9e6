"""Training: everything that turns a config into stored student rows.

- ``plan``: a run resolved and validated before anything trains (``Plan``, ``plan_run``), and each run's identity;
- ``pairs``: ``--layer-map``, which teacher layer each student layer learns from;
- ``runner``: the ``Runner``: the teacher and team, the pending runs, each seed's student trained (``fit``, which
  returns a ``FitResult``), scored and stored;
- ``trainer``: one training as the runner makes it (the harness's loop with a progress display);
- ``harness``: the training loop itself (Accelerate), evaluation and prediction;
- ``qa_eval``: scoring an extractive QA model (span scores per window, the best span per question, EM/F1);
- ``qa_run``: what a run of an extractive QA task does differently (windows numbered stably, the per-window span-logits
  cache, per-question F1 in the row, the signal check's question-blind floor, what a QA run refuses);
- ``outputs``: model outputs in one shape, and ``TeacherSource`` (the teacher's outputs per batch, cached or live);
- ``inference``: ``TeacherInference``, a teacher's fine-tuning and forward passes, handed down to the caches;
- ``sources``: which caches each objective reads from its teacher(s), and where shared stages are kept;
- ``teacher``: fine-tuning and caching a teacher, and its logits over the train file;
- ``teacher_cache``: the teacher-output cache (hidden states, attention) for layer objectives;
- ``rows``: a trained seed's stored row; ``leasing``: training a run under its lease; ``provenance``: git revision
  and package versions;
- ``workers``: ``--workers`` processes (spawned), one job per seed and objective;
- ``precision``: resolving ``--mixed-precision auto`` from a measured probe;
- ``profile``: a student's size and speed, recorded with each row;
- ``export``: the saved student of a stored run and its model card (``--save-students``, ``distilbench export``);
- ``cost``: recording the seconds of the parts a run shares (teacher, logits, outputs, shared stages); sharing them
  out at report time is :mod:`distilbench.results.cost`.

May import: ``objectives``, ``models``, ``data``, ``results`` and the bottom layer (``config``, ``errors``,
``plugins``, ``hashing``); never ``cli``, ``suite``, ``search`` or ``report``.
"""

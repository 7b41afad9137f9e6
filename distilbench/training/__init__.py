"""Training: everything that turns a config into stored student rows, in five rooms that import downward only
(``pyproject.toml``'s contract, kept by ``lint-imports``):

- ``families/``: one runner per task family, registered by family name (``RUNNERS``, ``make_runner``): sentence
  tasks use ``runs.runner.Runner`` itself; ``qa_runner`` (with ``qa_run``: windows, the span-logits cache, the
  question-blind floor) and ``lm_runner`` override its family hooks;
- ``runs/``: a run resolved before anything trains (``plan``: ``Plan``, ``plan_run``, each run's identity; ``pairs``:
  ``--layer-map``), the ``Runner`` (the teacher and team, the pending runs, each seed fitted, scored and stored),
  ``sources`` (which caches each objective reads), ``rows`` and ``provenance`` (a stored row, its code fingerprint),
  ``leasing`` and ``workers`` (runs divided among processes and machines), ``candidates`` (AutoSKD's retraining),
  ``profile`` (a student's size and speed);
- ``export/``: the saved student of a stored run and its model card (``--save-students``, ``distilbench export``);
- ``teachers/``: fine-tuning and caching a teacher and its logits (``teacher``), the teacher-output cache of layer
  objectives (``teacher_cache``), the causal LM's top-k cache (``lm_topk``), forward passes handed to the caches
  (``inference``) and the seconds of the parts runs share (``cost``);
- ``loop/``: the training loop itself (``harness``, with Accelerate; ``trainer``: one training with its progress
  display), model outputs in one shape (``outputs``), evaluation by family (``qa_eval``, ``lm``) and the precision
  (``precision``: ``--mixed-precision auto`` from a measured probe).

May import: ``objectives``, ``models``, ``data``, ``results`` and the bottom layer (``config``, ``errors``,
``plugins``, ``hashing``); never ``cli``, ``suite``, ``search`` or ``report``.
"""

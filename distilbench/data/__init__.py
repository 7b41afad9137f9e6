"""Data: tasks, their examples, batches and metrics.

- ``tasks``: the task registry (``registry/tasks/*.yaml``) and reading a task's TSV files;
- ``batching``: tokenising, splitting, subsampling and batching examples (torch tensors);
- ``metrics``: GLUE metrics with numpy, scipy and scikit-learn;
- ``lm``: causal-LM corpora tokenised, packed into blocks and cut into evaluation windows; the next-token NLL (torch).

May import: the bottom layer only (``config``, ``errors``, ``plugins``, ``hashing``). Importing this package imports
neither torch nor numpy: ``tasks`` is YAML, and ``distilbench report`` reads it.
"""

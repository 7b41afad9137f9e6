"""Data: tasks, their examples, batches and metrics.

- ``tasks``: the task registry (``registry/tasks/*.yaml``) and reading a task's TSV files;
- ``offline``: the task that stands in, said in one line, when a task's own files are not here (squad -> squad-devsplit);
- ``batching``: tokenising, splitting, subsampling and batching examples (torch tensors);
- ``metrics``: GLUE metrics with numpy, scipy and scikit-learn;
- extractive question answering (SQuAD): ``qa_tasks`` (the task family ``extractive-qa`` and its SQuAD-format JSON
  reader, pure Python), ``qa`` (question/context windows with offsets and start/end labels), ``qa_answers`` (the best
  legal span over a question's windows, and its scores), ``squad_metrics`` (the official EM/F1 definitions, pure Python).
- ``lm``: causal-LM corpora tokenised, packed into blocks and cut into evaluation windows; the next-token NLL (torch).
- ``lm_text``: how a causal-LM score was measured, in the one wording `run`, the model card and the report print.

May import: the bottom layer only (``config``, ``errors``, ``plugins``, ``hashing``). Importing this package imports
neither torch nor numpy: ``tasks`` is YAML, and ``distilbench report`` reads it.
"""

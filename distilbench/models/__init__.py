"""Models: what a model name means and how a model is built.

- ``loading``: model aliases (``registry/models.yaml``) and fetching them, resolving names, loading tokenizers and
  classifiers, the model cache folder;
- ``inits``: student initialisations (``first-k``, ``layers:…``, ``pretrained:…``), registered with a decorator;
- ``capture``: capturing attention scores and hidden states from a forward pass;
- ``scratch``: from-scratch causal LMs (a deterministic byte-level BPE tokenizer, a seeded GPT-2-style model).

May import: ``data`` and the bottom layer (``config``, ``errors``, ``plugins``, ``hashing``). Nothing above.
"""

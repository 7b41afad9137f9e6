"""distilbench: one harness to compare knowledge-distillation objectives for transformer language models."""

__version__ = "0.1.0"

"""How a causal-LM score was measured, in one wording (pure Python: ``distilbench report`` imports no torch).

`run`'s summary, the exported model card and the report each describe the same evaluation (:func:`.lm.eval_windows`:
window length, stride, windows and tokens scored); they read it from here so that the three cannot drift apart.
"""
from __future__ import annotations

_SCORE = "perplexity = exp(mean next-token NLL) over the whole test text"  # every LM task's dev file is its test text


def windows_text(max_length: int | None, stride: int | None, windows: int | None = None,
                 tokens: int | None = None) -> str:
    """'windows of 128 tokens every 64 (sliding: ...); 2,550 windows, 323,743 tokens scored' (the count only where
    the row stored it)."""
    if max_length is None or stride is None:
        return "windows not recorded"
    kind = ("non-overlapping" if stride == max_length
            else f"sliding: every scored token has at least {max_length - stride} tokens of context")
    count = f"; {windows:,} windows, {tokens:,} tokens scored" if windows and tokens else ""
    return f"windows of {max_length} tokens every {stride} ({kind}){count}"


def evaluation_text(lm: dict) -> str:
    """The whole description from a row's ``extra['lm']`` block (``eval_max_length``, ``eval_stride``, ``windows``,
    ``tokens``)."""
    return f"{_SCORE}, " + windows_text(lm.get("eval_max_length"), lm.get("eval_stride"), lm.get("windows"),
                                            lm.get("tokens"))

"""The C allocator's settings for training on the CPU (glibc on Linux).

glibc's malloc serves every block above its mmap threshold (at most 32 MiB on 64-bit) with a fresh ``mmap`` and
returns it with ``munmap`` when freed, so a tensor that size, allocated and freed at every step, is page-faulted in
anew each time: 4 KiB at a time, in the kernel. A causal LM's logits are such tensors ([16, 128, 8192] fp32 = 64 MiB,
several per step: teacher, student, their softmaxes, the gradient). On a 2-core machine (one thread, a 2-layer
128-wide GPT-2 student of a 4-layer teacher, vocabulary 8,192, batches of 16 x 128 tokens, forward KL + CE, AdamW)
a step took 1,731 ms, 775 ms of it system time, with 248,000 page faults; with :func:`tune` 889 ms, 0 ms system
time, 1 fault (``python benchmarks/allocator.py`` prints both; dated figures in docs/measurements.md, "The C
allocator"). A whole causal-LM run (`distilbench run --objective ted --task wikitext2 --seeds 2`) spent 1,017 s in
the kernel against 1,333 s in user code.

:func:`tune` keeps every block on the heap (``M_MMAP_MAX`` = 0) and freed memory in the process (``M_TRIM_THRESHOLD``
2 GiB), so the next step reuses pages already mapped. The cost is memory: what is freed is not handed back to the system
until the process ends, and glibc grows the heap a few times before a freed block fits an aligned request again, so
the peak resident size rises: 1,046 -> 1,424 MiB on the causal-LM step above, 2,040 -> 2,109 MiB on a 3-layer BERT
step (whose speed gain is smaller: 5,409 -> 5,007 ms). It changes no result.
``DISTILBENCH_MALLOC=default`` leaves the allocator alone, as do the user's own ``MALLOC_*_`` variables or glibc
tunables; on another C library (musl, macOS) it does nothing."""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest one (2 GiB)
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def wanted(environ=os.environ, platform: str = sys.platform) -> bool:
    """Whether to tune: on Linux, unless the user chose (``DISTILBENCH_MALLOC=default`` or their own settings)."""
    if platform != "linux" or environ.get("DISTILBENCH_MALLOC", "tuned") == "default":
        return False
    return not any(k in environ for k in USER_SETTINGS) and "glibc.malloc." not in environ.get("GLIBC_TUNABLES", "")


def tune() -> bool:
    """Apply the settings above to this process (call it early in every process that trains); True when applied."""
    if not wanted():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


def release() -> bool:
    """Hand the heap this process has freed back to the system (glibc's ``malloc_trim(0)``), under the same rule as
    :func:`tune`; True when some memory went back. For a process that is about to wait: a parent that fine-tuned the
    teacher and built the caches keeps gigabytes of freed blocks it never reuses while its workers train (glibc holds
    them either way: the teacher's batches come in many sizes, so freed blocks sit between live ones). A process that
    goes on training gains nothing: its next steps fault the same pages back in."""
    if not wanted():
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


__all__ = ["release", "tune", "wanted"]

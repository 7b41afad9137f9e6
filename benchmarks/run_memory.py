"""Does a process's heap grow from one student run to the next when nothing but the training is repeated?

    python benchmarks/run_memory.py                 # 4 runs, distilbench's allocator settings
    DISTILBENCH_MALLOC=default python benchmarks/run_memory.py   # glibc's own settings

Each run copies layers 1-3 of ``--model`` into a fresh student (as ``--init first-k`` does), trains it ``--steps``
steps with fused AdamW on random token batches of 16 x W tokens (W cycles through ``--widths``: 48,64,96,128 by
default; ``--widths 24-128`` draws every width of the range, as length-grouped batches of real text do) under the
precision ``--precision`` (default: what ``--mixed-precision auto`` resolves to), then drops it. Printed per run: the
heap (``RssAnon``) at the end, after ``del`` + ``gc.collect()``, and after glibc's ``malloc_trim(0)``. Flat figures
mean that training itself keeps nothing between runs, so growth seen in a real worker comes from what the harness
keeps; the trim column shows what glibc holds freed.

Why widths matter: under bf16 on a CPU, torch runs matmuls through oneDNN, which JIT-compiles a kernel per shape and
keeps it in its primitive cache (up to ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` primitives, 1,024 by default), so a run
over many batch widths holds more code and kernel state than one over four; the allocator's free lists fragment as
the sizes of the freed blocks multiply. Compare ``--widths 24-128 --steps 100`` at ``--precision bf16`` and ``fp32``.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distilbench.allocator import tune  # noqa: E402
from distilbench.models.inits import copy_layers  # noqa: E402
from distilbench.models.loading import load_classifier  # noqa: E402
from distilbench.training.loop.precision import resolve  # noqa: E402
from rss import status  # noqa: E402  (benchmarks/rss.py, beside this script)


def heap_mib() -> int:
    return status(os.getpid())["RssAnon"] // 1024  # rss.py's reader of /proc/P/status, in KiB


def parse_widths(text: str) -> list[int]:
    """``48,64`` -> [48, 64]; ``24-128`` -> [24, 25, ..., 128]."""
    if "-" in text:
        low, high = (int(x) for x in text.split("-"))
        return list(range(low, high + 1))
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mpnet-base")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--widths", default="48,64,96,128", help="batch widths in tokens: a list (cycled) or A-B (every "
                    "width of the range, drawn at random)")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    args = ap.parse_args()
    widths = parse_widths(args.widths)
    ranged = "-" in args.widths  # a range: draw each step's width, as length-grouped batches arrive
    tuned = tune()
    torch.set_num_threads(args.threads)
    precision = resolve("auto", True)[0] if args.precision == "auto" else args.precision
    libc = ctypes.CDLL("libc.so.6")
    teacher = load_classifier(args.model, 2, False, attn_implementation=None)
    print(f"allocator {'tuned' if tuned else 'glibc default'}, {precision}, {args.threads} thread(s); "
          f"{len(widths)} batch width(s) {min(widths)}..{max(widths)}; heap with the teacher loaded: {heap_mib()} MiB")
    for run in range(args.runs):
        student, _ = copy_layers(teacher, (1, 2, 3), seed=run)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True)
        gen = torch.Generator().manual_seed(run)
        for step in range(args.steps):
            drawn = int(torch.randint(len(widths), (1,), generator=gen)) if ranged else step % len(widths)
            width = widths[drawn]
            ids = torch.randint(5, 1000, (16, width), generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            torch.nn.functional.cross_entropy(logits.float(), torch.zeros(16, dtype=torch.long)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        end = heap_mib()
        del student, opt, logits
        gc.collect()
        freed = heap_mib()
        libc.malloc_trim(0)
        print(f"run {run}: heap {end} MiB at the end, {freed} after del + gc, {heap_mib()} after malloc_trim(0)",
              flush=True)


if __name__ == "__main__":
    main()

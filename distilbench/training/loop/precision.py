"""The float precision a run computes in: resolved once per run from ``--mixed-precision``, stored in every row.

``auto`` decides per machine:

- a CUDA device: bf16 autocast where the device supports it, else fp32;
- a CPU: bf16 autocast only where the processor has bf16 matrix instructions (``amx_bf16`` or ``avx512_bf16`` in
  ``/proc/cpuinfo``) **and** a one-off probe measured it faster. Without those instructions bf16 is emulated (on the
  AVX2 machine this project is developed on, its matmuls ran at ~0.16x fp32's speed and a training step took 2x as
  long), so the probe does not even run;
- anything else: fp32.

The probe times a few matmuls of a base-size transformer layer's shapes (1,024 tokens × 768 hidden: attention
projection, FFN up, FFN down), fp32 against bf16 autocast on the same inputs and threads, and bf16 must be at least
``MARGIN`` times faster: a tie within timing noise keeps fp32, whose results need no caveat. Its result is kept in
``precision-probe.json`` under the distilbench cache folder, keyed by CPU model, CPU flags, torch version and thread
count, so each machine (and thread count) measures once.

A run stores the precision it used in ``extra.precision``; it is part of the run identity (``params.precision``)
only when it is not fp32, so every identity written before precision was recorded, all fp32, keeps its key. The
teacher's key, the teacher-output caches and TED's shared stages carry it the same way.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ...hashing import stable_hash
from ...models.loading import cache_dir

PRECISIONS = ("fp32", "bf16", "fp16")
REQUESTS = ("auto", "no", "fp32", "bf16", "fp16")  # what --mixed-precision accepts ("no" is accelerate's word for fp32)
ACCELERATE = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # our name -> accelerate's mixed_precision
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
MARGIN = 1.10  # bf16 must beat fp32 by 10%: run-to-run noise of a busy 2-core machine is about ±5-10%
# (tokens, in, out) of one base-size layer's matmuls on a batch of 16 × 64 tokens: Q/K/V/O projection, FFN up, FFN down
PROBE_SHAPES = ((1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768))
CACHE_FILE = "precision-probe.json"


def identity_part(precision: str) -> dict:
    """What a precision adds to a run's (or a cache's) identity: nothing for fp32, so fp32 keys never change."""
    return {} if precision == "fp32" else {"precision": precision}


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor listed; ("unknown", no flags) where there is no /proc/cpuinfo."""
    model, flags = "unknown", frozenset()
    try:
        text = Path(path).read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name" and model == "unknown":
            model = value.strip()
        elif name in ("flags", "Features") and not flags:  # x86 / ARM
            flags = frozenset(value.split())
        if model != "unknown" and flags:
            break
    return model, flags


def has_bf16_instructions(flags: frozenset[str]) -> bool:
    return any(f in flags for f in BF16_FLAGS)


def bf16_matmul_native(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``device`` has bf16 matrix hardware (not emulation), and what says so."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA device {'with' if ok else 'without'} bf16"
    if device.type == "cpu":
        model, flags = cpu_info()
        found = [f for f in BF16_FLAGS if f in flags]
        return bool(found), (f"{model}: {', '.join(found)}" if found else f"{model}: no AMX-BF16 or AVX512-BF16")
    return False, f"{device.type}: not checked"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_seconds(shapes, bf16: bool, device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Fastest of ``repeats`` timings of one pass over ``shapes`` ((m, k, n): an [m, k] input through a [n, k] weight,
    as ``nn.Linear`` does), fp32 or under bf16 autocast. The inputs stay fp32 either way, so bf16 pays for its casts
    as a training step does."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(m, k, generator=gen).to(device), torch.randn(n, k, generator=gen).to(device)) for m, k, n in shapes]
    context = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def one_pass() -> float:
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad(), context():
            for x, w in pairs:
                torch.nn.functional.linear(x, w)
        _sync(device)
        return time.perf_counter() - start

    one_pass()  # warm-up: first-call allocations and kernel selection
    return min(one_pass() for _ in range(repeats))


def flops(shapes) -> int:
    """Multiply-adds × 2 of one pass over ``shapes``."""
    return sum(2 * m * k * n for m, k, n in shapes)


def matmul_gflops(shapes, bf16: bool, device: torch.device | str = "cpu", repeats: int = 3) -> float:
    return flops(shapes) / matmul_seconds(shapes, bf16, device, repeats) / 1e9


def probe(shapes=PROBE_SHAPES, repeats: int = 3) -> dict:
    """fp32 and bf16-autocast GFLOP/s of ``shapes`` on this CPU at the current thread count, and their ratio."""
    fp32 = matmul_gflops(shapes, False, "cpu", repeats)
    bf16 = matmul_gflops(shapes, True, "cpu", repeats)
    return {"fp32_gflops": fp32, "bf16_gflops": bf16, "speedup": bf16 / fp32,
            "shapes": [list(s) for s in shapes], "repeats": repeats}


def probe_key(model: str, flags: frozenset[str], threads: int) -> str:
    return stable_hash({"cpu": model, "flags": sorted(flags), "torch": torch.__version__, "threads": threads})


def probe_path() -> Path:
    return cache_dir() / CACHE_FILE


def cached_probe(model: str, flags: frozenset[str], run: Callable[[], dict] | None = None) -> dict:
    """This machine's probe result at the current thread count: from the cache file, else measured now and stored."""
    threads = torch.get_num_threads()
    key = probe_key(model, flags, threads)
    path = probe_path()
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    if key in entries:
        return entries[key]
    result = {**(run or probe)(), "cpu": model, "threads": threads, "torch": torch.__version__,
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    entries[key] = result
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(entries, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
    return result


def resolve(requested: str, cpu: bool = False) -> tuple[str, str]:
    """(precision, why) for ``--mixed-precision requested``; ``cpu`` is ``--cpu`` (the CPU even beside an accelerator)."""
    if requested in ("no", "fp32"):
        return "fp32", f"--mixed-precision {requested}"
    if requested in ("bf16", "fp16"):
        return requested, f"--mixed-precision {requested}"
    if requested != "auto":
        raise ValueError(f"--mixed-precision must be one of {', '.join(REQUESTS)} (got {requested!r})")
    if not cpu and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: a CUDA device with bf16"
        return "fp32", "auto: a CUDA device without bf16"
    if not cpu and torch.accelerator.is_available():  # MPS, XPU, ...: accelerate places the run there; not measured
        return "fp32", f"auto: {torch.accelerator.current_accelerator().type} (bf16 not measured there)"
    model, flags = cpu_info()
    if not has_bf16_instructions(flags):
        return "fp32", "auto: this CPU has no AMX-BF16 or AVX512-BF16 (bf16 would be emulated)"
    result = cached_probe(model, flags)
    why = (f"bf16 {result['bf16_gflops']:.0f} vs fp32 {result['fp32_gflops']:.0f} GFLOP/s at {result['threads']} "
           f"thread(s), {result['speedup']:.2f}x")
    if result["speedup"] >= MARGIN:
        return "bf16", f"auto: the CPU probe measured bf16 faster ({why})"
    return "fp32", f"auto: the CPU probe did not measure bf16 at least {MARGIN:.2f}x faster ({why})"

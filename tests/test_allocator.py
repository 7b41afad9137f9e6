"""distilbench.allocator: large per-step blocks stay on the heap, so a loop that allocates, touches and frees a
64 MiB array stops page-faulting after its first few passes; a user's own setting or DISTILBENCH_MALLOC=default wins; every
spawned worker applies it before its work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distilbench import allocator

LOOP = """
import json, resource, sys
import torch
from distilbench.allocator import tune
tuned = tune()
for _ in range(20):  # the first passes map pages (glibc grows the heap a few times before a freed block fits again;
    # on an AVX-512 machine once more after 10 passes)
    torch.ones(1 << 24).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(1 << 24).sum()  # 64 MiB allocated, every page written, freed (as a step's logits are)
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", LOOP], env={**env, "DISTILBENCH_MALLOC": setting}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_a_tuned_process_reuses_its_pages_instead_of_faulting_them_in_at_every_allocation():
    default, tuned = _faults("default"), _faults("tuned")
    assert default["tuned"] is False and tuned["tuned"] is True
    pages = 10 * (64 << 20) // 4096  # 163,840: one fault per page per pass when each array is a fresh mmap
    assert default["faults"] > 0.9 * pages
    assert tuned["faults"] < 0.01 * pages


def test_the_users_own_allocator_settings_and_other_platforms_are_left_alone():
    assert allocator.wanted({}, "linux")
    assert not allocator.wanted({"DISTILBENCH_MALLOC": "default"}, "linux")
    assert not allocator.wanted({"MALLOC_MMAP_THRESHOLD_": "131072"}, "linux")
    assert not allocator.wanted({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "linux")
    assert allocator.wanted({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, "linux")  # another tunable: still tuned
    assert not allocator.wanted({}, "darwin")


def test_a_spawned_worker_tunes_its_allocator_before_its_work(monkeypatch):
    from distilbench.training import workers

    calls = []
    monkeypatch.setattr(allocator, "tune", lambda: calls.append("tune") or True)
    workers._start(lambda *a: calls.append(a), 1, "x")
    assert calls == ["tune", (1, "x")]

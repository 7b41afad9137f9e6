"""distilbench.allocator: large per-step blocks stay on the heap, so a loop that allocates, touches and frees a
64 MiB array stops page-faulting after its first few passes; a user's own setting or DISTILBENCH_MALLOC=default wins; every
spawned worker applies it before its work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    from distilbench.training.runs import workers

    calls = []
    monkeypatch.setattr(workers, "tune", lambda: calls.append("tune") or True)
    workers._start(lambda *a: calls.append(a), 1, "x")
    assert calls == ["tune", (1, "x")]


RELEASE = """
import json, os, sys
import torch
from distilbench.allocator import release, tune
sys.path.insert(0, BENCHMARKS)
from rss import status  # benchmarks/rss.py's reader of /proc/P/status
def heap_mib():
    return status(os.getpid())["RssAnon"] // 1024
tune()
blocks = [torch.ones(1 << 21 + (i % 3)) for i in range(96)]  # 8, 16 and 32 MiB blocks: ~1.8 GiB, every page written
keep = blocks[::8]  # a few stay alive between the freed ones, as a parent's models and caches do
del blocks
freed = heap_mib()
done = release()
print(json.dumps({"freed": freed, "released": heap_mib(), "done": done}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_release_hands_the_freed_heap_back_to_the_system():
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS and k != "DISTILBENCH_MALLOC"}
    script = RELEASE.replace("BENCHMARKS", repr(str(Path(__file__).resolve().parents[1] / "benchmarks")))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # tuned, glibc keeps the ~1.6 GiB freed (trim threshold 2 GiB); released, only the live ~0.2 GiB and torch remain
    assert r["done"] is True and r["freed"] > 1500
    assert r["released"] < r["freed"] - 1200
    out = subprocess.run([sys.executable, "-c", script], env={**env, "DISTILBENCH_MALLOC": "default"},
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1])["done"] is False  # the user's choice: left alone


def test_the_parent_releases_its_freed_heap_before_it_starts_workers(monkeypatch):
    from distilbench.training.runs import workers

    calls = []
    monkeypatch.setattr(workers, "release", lambda: calls.append("release") or True)

    class FakeProcess:  # no real process: what matters is the order
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def start(self):
            calls.append("start")

    class Context:
        Process = FakeProcess

    monkeypatch.setattr("multiprocessing.get_context", lambda kind: Context)
    workers.start_processes(print, [(0,), (1,)], 1)
    assert calls == ["release", "start", "start"]

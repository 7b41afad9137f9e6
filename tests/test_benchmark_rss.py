"""benchmarks/rss.py splits a process's peak resident memory into heap and memory-mapped file pages (the part
/usr/bin/time's peak counts but the kernel can drop): a child that holds 120 MiB of heap and reads a 60 MiB file
through a memmap must show both, each to within a few MiB."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_rss_splits_heap_from_mapped_file_pages(tmp_path):
    data = tmp_path / "cache.bin"
    data.write_bytes(b"\1" * (60 << 20))
    child = (f"import mmap, time\n"
             f"heap = bytearray(120 << 20)\n"
             f"for i in range(0, len(heap), 4096): heap[i] = 1\n"
             f"f = open({str(data)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
             f"total = sum(m[i] for i in range(0, len(m), 4096))\n"
             f"time.sleep(1.0)\n")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rss.py"), "--interval", "0.2", "--out",
                          str(tmp_path / "s.csv"), "--", sys.executable, "-c", child],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].split()[:5] == ["pid", "peak", "RSS", "MiB", "anon"]
    rows = [line.split() for line in out[1:]]
    assert len(rows) == 1  # the python child; nothing else above 50 MiB
    rss, anon, file_ = (int(x) for x in rows[0][1:4])
    assert 120 <= anon < 140 and 60 <= file_ < 80 and rss >= anon + file_
    assert (tmp_path / "s.csv").read_text().startswith("t_s,pid,RssAnon,RssFile,RssShmem,cmd")

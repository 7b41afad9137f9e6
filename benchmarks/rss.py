"""What a process tree's peak resident memory is made of: anonymous memory (the heap: tensors, the allocator's
retained blocks) or file pages (memory-mapped files such as the teacher-output cache, which the kernel can drop and
re-read at any time). ``/usr/bin/time``'s "Maximum resident set size" counts both, so a job that writes or reads a
1.5 GB memmap shows 1.5 GB more than it needs.

    python benchmarks/rss.py --pid PID [--interval 1] [--out samples.csv]    # sample PID and its descendants until it exits
    python benchmarks/rss.py -- COMMAND ...                                  # run COMMAND and sample it

Every ``--interval`` seconds it reads ``/proc/P/status`` (RssAnon, RssFile, RssShmem) of each process in the tree.
At the end it prints, per process, the sample with the largest resident size and its parts, and the largest
anonymous size seen. Linux only. ``benchmarks/main_job.sh`` runs the main job under it.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

FIELDS = ("RssAnon", "RssFile", "RssShmem")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children file), [] when it is gone."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children(pid)
    return out


def status(pid: int) -> dict[str, int] | None:
    """``{RssAnon, RssFile, RssShmem}`` in KiB and the command name, None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        cmd = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0])
    return {**values, "cmd": cmd} if len(values) == len(FIELDS) else None


def sample(root: int, interval: float, out: Path | None, alive=None) -> dict[int, dict]:
    """Sample until ``root`` exits (``alive()`` False: a child of ours stays in /proc until reaped); per pid: the
    largest-RSS sample and the largest RssAnon."""
    alive = alive or (lambda: Path(f"/proc/{root}").exists())
    peaks: dict[int, dict] = {}
    start = time.monotonic()
    writer = None
    if out is not None:
        f = out.open("w", newline="", encoding="utf-8")
        writer = csv.writer(f)
        writer.writerow(["t_s", "pid", *FIELDS, "cmd"])
    while alive():
        t = time.monotonic() - start
        for pid in tree(root):
            s = status(pid)
            if s is None:
                continue
            rss = sum(s[k] for k in FIELDS)
            p = peaks.setdefault(pid, {"rss": -1, "max_anon": 0, "cmd": ""})
            p["cmd"] = p["cmd"] or s["cmd"]  # empty until the child has exec'd
            p["max_anon"] = max(p["max_anon"], s["RssAnon"])
            if rss > p["rss"]:
                p.update(rss=rss, at=t, **{k: s[k] for k in FIELDS})
            if writer is not None:
                writer.writerow([f"{t:.1f}", pid, *(s[k] for k in FIELDS), s["cmd"][:120]])
        time.sleep(interval)
    if writer is not None:
        f.close()
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pid", type=int, help="the root process to sample (with its descendants)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    ap.add_argument("--out", type=Path, help="write every sample to this CSV")
    ap.add_argument("command", nargs="*", help="a command to run and sample (after --)")
    args = ap.parse_args()
    if (args.pid is None) == (not args.command):
        sys.exit("rss.py: give --pid PID or a command after --, not both")
    proc = subprocess.Popen(args.command) if args.command else None
    peaks = sample(proc.pid if proc else args.pid, args.interval, args.out,
                   (lambda: proc.poll() is None) if proc else None)
    mib = 1024
    print(f"{'pid':>8} {'peak RSS MiB':>13} {'anon':>7} {'file':>7} {'shmem':>7} {'at s':>7} {'max anon MiB':>13}  command")
    for pid, p in sorted(peaks.items(), key=lambda kv: -kv[1]["rss"]):
        if p["rss"] < 50 * mib:  # shells, time(1): noise
            continue
        print(f"{pid:>8} {p['rss'] / mib:>13.0f} {p['RssAnon'] / mib:>7.0f} {p['RssFile'] / mib:>7.0f} "
              f"{p['RssShmem'] / mib:>7.0f} {p['at']:>7.0f} {p['max_anon'] / mib:>13.0f}  {p['cmd'][:70]}")
    if proc is not None:
        sys.exit(proc.wait())


if __name__ == "__main__":
    main()

"""How to use the cores: the same student runs with ``--workers 1`` (one process, every core's threads) and with
``--workers N`` (N single-thread processes). Prints wall time, examples/s per run and the speed-up.

    python benchmarks/workers.py --task qnli-devsplit --max-train-examples 2000 --teacher-epochs 2 --runs 4
    python benchmarks/workers.py --workers 1 --runs 4 ...   # only the one-process run: does each run slow down?

Each configuration trains the same ``--runs`` seeds of ``--objective`` (no baseline) into its own fresh results
store, through ``distilbench run`` in a subprocess, after one untimed warm-up that fine-tunes (or finds) the teacher
and builds its caches. Run it on an otherwise idle machine: other load moves the figures.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distilbench.results.store import ResultsStore  # noqa: E402
from distilbench.training.runs.workers import cores  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="qnli-devsplit")
    ap.add_argument("--objective", default="kd")
    ap.add_argument("--init", default="every-k")
    ap.add_argument("--runs", type=int, default=4, help="seeds per configuration")
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--max-train-examples", default="1000")
    ap.add_argument("--teacher-epochs", default="2")
    ap.add_argument("--workers", default=str(cores()), help="the parallel configuration (default: one per core)")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
    args = ap.parse_args()
    common = ["--task", args.task, "--objective", args.objective, "--init", args.init, "--no-baseline",
              "--epochs", args.epochs, "--max-train-examples", args.max_train_examples,
              "--teacher-epochs", args.teacher_epochs, "--data-dir", args.data_dir, "--no-progress"]
    tmp = Path(tempfile.mkdtemp(prefix="distilbench-workers-"))

    def run(workers: str, runs: int, store: Path) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "distilbench", "run", *common, "--seeds", str(runs), "--workers", workers,
                        "--results", str(store)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t

    print(f"warm-up (teacher, caches) ... ", end="", flush=True)
    print(f"{run('1', 1, tmp / 'warm.sqlite'):.0f} s")
    print(f"{args.runs} runs of {args.objective} on {args.task} ({args.max_train_examples} examples, {args.epochs} "
          f"epoch(s)), {cores()} cores")
    print(f"{'workers':>8} {'threads':>8} {'wall s':>8} {'ex/s per run':>24} {'total ex/s':>11}")
    walls = {}
    for workers in dict.fromkeys(("1", args.workers)):
        store = tmp / f"w{workers}.sqlite"
        wall = run(workers, args.runs, store)
        rows = ResultsStore(store).rows()
        speeds = [r["examples_per_s"] for r in sorted(rows, key=lambda r: r["seed"])]
        examples = sum(r["examples_per_s"] * r["wall_time_s"] for r in rows)
        walls[workers] = wall
        if workers == "1":
            first_last = (speeds[0], speeds[-1])
        threads = max(1, cores() // int(workers))
        print(f"{workers:>8} {threads:>8} {wall:8.0f} {' '.join(f'{s:.1f}' for s in speeds):>24} {examples / wall:11.1f}")
    # one process trains its seeds in order: a slowdown inside the process shows as a falling row (issue 17's target:
    # the last run within 5% of the first)
    print(f"--workers 1: last run ÷ first run = {first_last[1] / first_last[0]:.3f}")
    if args.workers == "1":
        return
    print(f"speed-up of --workers {args.workers} over --workers 1: {walls['1'] / walls[args.workers]:.2f}x (wall time, "
          f"process start-up and evaluation included)")


if __name__ == "__main__":
    main()

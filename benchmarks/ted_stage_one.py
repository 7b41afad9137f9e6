"""TED's Stage I with first-token and with mean-pooled filter heads, on the quick start's data.

Runs ``distilbench run --objective ted`` once per pooling (SST-2, the small embedded teacher ``minilm-l6``, a student
from its layers 1,2,3, 2,000 training examples, 2 + 2 epochs, one seed) into a fresh cache and store, and prints for
each: Stage I's loss (the teacher filters' task loss summed over the K layer pairs, mean over its epoch), chance for
it (K ln C: every head predicting the class prior of a balanced task), and the TED student's dev accuracy.

    python benchmarks/ted_stage_one.py --data-dir ../shared/data/glue
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distilbench.results.store import ResultsStore

RUN = ["--objective", "ted", "--task", "sst2", "--teacher", "minilm-l6", "--init", "layers:1,2,3", "--student-layers", "3",
       "--max-train-examples", "2000", "--epochs", "2", "--teacher-epochs", "2", "--teacher-lr", "1e-4", "--lr", "1e-4",
       "--teacher-micro-batch", "0", "--seeds", "1", "--no-baseline", "--no-progress"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--mixed-precision", default="fp32", choices=("fp32", "bf16", "auto"))
    args = ap.parse_args()
    extra = ["--data-dir", args.data_dir] if args.data_dir else []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DISTILBENCH_CACHE": str(Path(tmp) / "cache")}
        store = Path(tmp) / "results.sqlite"
        print(f"{'pooling':8} {'Stage I loss':>12} {'chance':>7} {'ted dev acc':>11} {'wall (s)':>9}")
        for pooling in ("cls", "mean"):
            start = time.perf_counter()
            cmd = [sys.executable, "-m", "distilbench", "run", *RUN, "--pooling", pooling, "--mixed-precision",
                   args.mixed_precision, "--results", str(store), *extra]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            row = [r for r in ResultsStore(store).rows(objective="ted") if (r["extra"].get("pooling") or "cls") == pooling][0]
            stage = [h for h in row["extra"]["history"] if h.get("stage") == "filters"][0]
            stage = (stage.get("trained") or [stage])[0]
            k = len(row["extra"]["layer_mapping"])
            print(f"{pooling:8} {stage['filters_t']:12.3f} {k * math.log(2):7.3f} {100 * row['score']:11.2f} "
                  f"{time.perf_counter() - start:9.0f}")


if __name__ == "__main__":
    main()

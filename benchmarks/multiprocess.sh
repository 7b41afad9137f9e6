#!/usr/bin/env bash
# The same run trained by one process and by two data-parallel processes (torchrun, gloo on the CPU; on GPUs torchrun
# or `accelerate launch --multi_gpu` take the same path): the score each stores, seed by seed. With N processes each
# takes --batch-size examples a step, so a step averages N batches and an epoch has 1/N the steps: another
# computation, stored as its own cell (`processes` in the run's identity).
#
#   bash benchmarks/multiprocess.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data/glue}
OUT=${2:-$(mktemp -d)}
ARGS=(--teacher minilm-l6 --task sst2 --data-dir "$DATA" --init layers:1,2,3 --student-layers 3 --layer-map init
      --max-train-examples 800 --teacher-max-train-examples 8000 --epochs 2 --teacher-epochs 2 --lr 1e-4
      --teacher-lr 1e-4 --teacher-micro-batch 0 --objective kd --seeds 3 --no-baseline --no-progress
      --results "$OUT/results.sqlite")
OMP_NUM_THREADS=1 python -m distilbench run "${ARGS[@]}" --workers 1   # one thread a process, as below
OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m distilbench run "${ARGS[@]}"
python - "$OUT/results.sqlite" <<'PY'
import json, sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute("SELECT seed, score, params, extra FROM runs WHERE kind = 'student'").fetchall()
by = {}
for seed, score, params, extra in rows:
    n = json.loads(params).get("processes", 1)
    by.setdefault(seed, {})[n] = (100 * score, json.loads(extra)["history"][-1].get("steps"), json.loads(extra).get("precision"))
print("| seed | 1 process | 2 processes | difference | steps (1 / 2) | precision |")
print("|---:|---:|---:|---:|---|---|")
for seed in sorted(by):
    one, two = by[seed].get(1), by[seed].get(2)
    if one and two:
        print(f"| {seed} | {one[0]:.2f} | {two[0]:.2f} | {two[0] - one[0]:+.2f} | {one[1]} / {two[1]} | {one[2]} |")
PY

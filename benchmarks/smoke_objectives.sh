#!/usr/bin/env bash
# Every registered objective and the three combinations of paper 002's Table 1, on the real embedded default
# (mpnet-base teacher, 3-layer student from teacher layers 1,2,3), on a small slice of real data, seeds 0 and 1.
# It shows each objective runs end to end on the real models; the scores of such small runs mean nothing.
# Usage: benchmarks/smoke_objectives.sh [TASK] [RESULTS]   (default: mrpc, runs/smoke.sqlite)
set -euo pipefail
task=${1:-mrpc}
results=${2:-runs/smoke.sqlite}
data=${GLUE_DIR:-../shared/data/glue}
small=(--max-train-examples 64 --max-eval-examples 64 --epochs 1 --teacher-epochs 1 --no-progress)
objectives=(none kd hid-cls hid-seq hid-cls-contrast att-mse att-kl val-kl lwd ted ted-kl
            att-kl+hid-seq att-kl+val-kl att-mse+hid-seq)
for objective in "${objectives[@]}"; do
  start=$(date +%s)
  distilbench run --objective "$objective" --task "$task" --init layers:1,2,3 --seeds 2 --no-baseline \
    --data-dir "$data" --results "$results" "${small[@]}" > /dev/null
  echo "$objective: ok in $(( $(date +%s) - start )) s"
done

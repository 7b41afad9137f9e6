#!/usr/bin/env bash
# (e) The main job end to end: the README's first set-up command (install, then
# `distilbench run --objective ted --task rte --seeds 4`) under /usr/bin/time -v, in this checkout.
# Prints its wall time, peak resident memory (of the largest process: pip or the run) and the summary table, then
# what each process's peak was made of (benchmarks/rss.py: heap vs memory-mapped file pages such as the teacher-output
# cache, which /usr/bin/time counts alike; every sample in $log.rss.csv).
#   bash benchmarks/main_job.sh              # cold when the cache is empty: the teacher is fine-tuned first
#   bash benchmarks/main_job.sh              # again: warm, trains nothing
#   DISTILBENCH_CACHE=$(mktemp -d) bash benchmarks/main_job.sh   # force a cold run
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=$(grep -m1 '^python3 -m venv .venv && .*distilbench run' README.md)
log=$(mktemp)
/usr/bin/time -v python3 benchmarks/rss.py --interval 2 --out "$log.rss.csv" -- bash -c "$cmd" >"$log" 2>&1 || { tail -30 "$log"; exit 1; }
grep -E "teacher .* dev|run\(s\) to train|seed [0-9]: dev" "$log" || true
sed -n '/dev accuracy (%)/,/└/p' "$log"
grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$log"
sed -n '/peak RSS MiB/,/^\s*Command being timed/p' "$log" | grep -v "Command being timed"
echo "full log: $log"

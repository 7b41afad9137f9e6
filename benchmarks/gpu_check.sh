#!/usr/bin/env bash
# The GPU path, checked against the CPU: a tiny suite (kd, ted, att-kl; 2 seeds; the minilm-l6 teacher on 400 SST-2
# examples) trained on the CPU in fp32 (the reference), then on the GPU in fp32 and under bf16 autocast. It checks:
#   - every GPU cell's mean dev accuracy is within TOL_FP32 (fp32) / TOL_BF16 (bf16) points of the CPU cell's;
#   - every GPU run's first-epoch mean training loss is within 5% (fp32) / 10% (bf16) of the CPU run's;
# and prints each cell's training throughput (examples/s) and peak memory as the rows store it (MiB: the larger of the
# process's resident memory and the GPU memory allocated). Each pass has its own cache folder, so the GPU passes
# fine-tune their own teacher, build their own teacher caches and train TED's Stage I on the GPU.
# GPU kernels are not bit-identical to the CPU's, so scores are compared within tolerances, not for equality.
#
#   bash benchmarks/gpu_check.sh [DATA_DIR] [OUT_DIR]        # exits 1 when a check fails, 2 without a CUDA device
set -euo pipefail
DATA=${1:-../shared/data/glue}
OUT=${2:-$(mktemp -d)}
TOL_FP32=${TOL_FP32:-1.0}
TOL_BF16=${TOL_BF16:-2.5}
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" || {
  echo "gpu_check: no CUDA device here: this script checks the GPU path, nothing was run" >&2; exit 2; }
cat > "$OUT/gpu-check.yaml" <<'YAML'
name: gpu-check
description: the GPU path against the CPU, a tiny grid
tasks: [sst2]
objectives: [kd, ted, att-kl]
inits: ["layers:1,2,3"]
teachers: [minilm-l6]
seeds: [0, 1]
settings: {student_layers: 3, layer_map: init, max_train_examples: 400, max_eval_examples: 400, epochs: 1,
           teacher_epochs: 1, lr: 1.0e-4, teacher_lr: 1.0e-4}
scales:
  cpu: {}
YAML
run() {  # $1 label, then flags
  local label=$1; shift
  DISTILBENCH_CACHE="$OUT/cache-$label" distilbench suite "$OUT/gpu-check.yaml" --data-dir "$DATA" --results "$OUT/$label.sqlite" --out "$OUT/report-$label" \
    --no-progress --workers 1 "$@"
}
run cpu --cpu --mixed-precision fp32
run gpu-fp32 --mixed-precision fp32
run gpu-bf16 --mixed-precision bf16
python - "$OUT" "$TOL_FP32" "$TOL_BF16" <<'PY'
import json, sqlite3, sys
out, tols = sys.argv[1], {"gpu-fp32": (float(sys.argv[2]), 0.05), "gpu-bf16": (float(sys.argv[3]), 0.10)}

def rows(label):
    con = sqlite3.connect(f"{out}/{label}.sqlite")
    got = {}
    for obj, seed, score, eps, mem, extra in con.execute(
            "SELECT objective, seed, score, examples_per_s, peak_mem_mb, extra FROM runs WHERE kind = 'student'"):
        history = json.loads(extra)["history"]  # the last stage's first epoch (TED: after its Stage I)
        first = next(h for h in history if h.get("stage") == history[-1]["stage"] and "loss" in h)
        got[(obj, seed)] = (100 * score, eps, mem, first["loss"], json.loads(extra).get("device"))
    return got

ref, failed = rows("cpu"), []
print("| run | cell | CPU acc | GPU acc | Δ | first-epoch loss CPU / GPU | ex/s | peak MiB | device |")
print("|---|---|---:|---:|---:|---|---:|---:|---|")
for label, (tol, loss_tol) in tols.items():
    got = rows(label)
    for obj in sorted({o for o, _ in ref}):
        seeds = sorted(s for o, s in ref if o == obj)
        cpu = sum(ref[(obj, s)][0] for s in seeds) / len(seeds)
        gpu = sum(got[(obj, s)][0] for s in seeds) / len(seeds)
        losses = [(ref[(obj, s)][3], got[(obj, s)][3]) for s in seeds]
        ok = abs(gpu - cpu) <= tol and all(abs(g - c) <= loss_tol * abs(c) for c, g in losses)
        failed += [] if ok else [f"{label} {obj}"]
        eps = sum(got[(obj, s)][1] for s in seeds) / len(seeds)
        mem = max(got[(obj, s)][2] for s in seeds)
        print(f"| {label} | {obj} | {cpu:.2f} | {gpu:.2f} | {gpu - cpu:+.2f} | "
              + ", ".join(f"{c:.4f} / {g:.4f}" for c, g in losses)
              + f" | {eps:.1f} | {mem:.0f} | {got[(obj, seeds[0])][4]} |" + ("" if ok else " **FAILED**"))
print("all checks passed" if not failed else "FAILED: " + "; ".join(failed))
sys.exit(1 if failed else 0)
PY

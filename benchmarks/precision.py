"""bf16 against fp32 on this machine: what ``--mixed-precision auto`` decides and why, the probe's figures, and
(``--paired``) the dev-score effect on one suite cell with paired seeds.

    python benchmarks/precision.py                    # CPU flags, fp32 vs bf16 GFLOP/s per probe shape, auto's choice
    python benchmarks/precision.py --paired --task qnli-devsplit --objective kd --seeds 3 \\
        --data-dir ../shared/data/glue -- --init layers:4,8,12 --epochs 3   # flags after -- go to `distilbench run`

The probe part measures afresh (the cached result that ``auto`` reads is printed beside it): each of
``distilbench.training.loop.precision.PROBE_SHAPES`` (a base-size layer's matmuls on 1,024 tokens) fp32 and under bf16 autocast,
fastest of ``--repeats``, at this process's thread count (``--threads``).

``--paired`` trains the cell twice through ``distilbench run`` into one results store: ``--mixed-precision fp32``,
then ``bf16``, each in its own process (accelerate holds one precision per process). A bf16 run fine-tunes its own
teacher and builds its own teacher-output caches in bf16 (they are part of its identity), so the difference is that
of the whole pipeline. It then pairs the two cells by seed: per-seed dev scores, the mean difference with its 95%
interval, the paired t-test, and the training time per seed. On a CPU without AMX-BF16 or AVX512-BF16, bf16 is
emulated: slow, and its speed means nothing there (the scores still do).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distilbench.training.loop import precision  # noqa: E402


def probe_figures(repeats: int) -> None:
    model, flags = precision.cpu_info()
    found = [f for f in precision.BF16_FLAGS if f in flags] or ["none"]
    print(f"CPU: {model}; bf16 flags: {', '.join(found)}; torch {torch.__version__}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)\n")
    print(f"{'shape (tokens x in -> out)':<28} {'fp32 GFLOP/s':>13} {'bf16 GFLOP/s':>13} {'bf16 / fp32':>12}")
    for shape in precision.PROBE_SHAPES:
        fp32 = precision.matmul_gflops((shape,), False, "cpu", repeats)
        bf16 = precision.matmul_gflops((shape,), True, "cpu", repeats)
        m, k, n = shape
        print(f"{f'{m} x {k} -> {n}':<28} {fp32:13.1f} {bf16:13.1f} {bf16 / fp32:11.2f}x")
    whole = precision.probe(repeats=repeats)
    print(f"{'all three (the probe)':<28} {whole['fp32_gflops']:13.1f} {whole['bf16_gflops']:13.1f} {whole['speedup']:11.2f}x")
    chosen, why = precision.resolve("auto", cpu=True)
    print(f"\n--mixed-precision auto on this CPU: {chosen} ({why}); bf16 needs >= {precision.MARGIN:.2f}x")
    if precision.has_bf16_instructions(flags):
        print(f"cached probe in {precision.probe_path()}: {precision.cached_probe(model, flags)}")


def paired(args, run_flags: list[str]) -> None:
    from distilbench.hashing import stable_hash
    from distilbench.results.stats import paired_test
    from distilbench.results.store import ResultsStore

    for p in ("fp32", "bf16"):
        cmd = [sys.executable, "-m", "distilbench", "run", "--task", args.task, "--objective", args.objective,
               "--seeds", str(args.seeds), "--no-baseline", "--mixed-precision", p, "--results", args.results,
               *(["--data-dir", args.data_dir] if args.data_dir else []), *run_flags]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    store = ResultsStore(args.results)
    try:
        rows = store.rows(task=args.task, objective=args.objective)
    finally:
        store.close()
    # one cell per (configuration without its precision); pair the fp32 and bf16 cells of each configuration found.
    # The teacher's key goes too: a bf16 run fine-tuned its own teacher, whose key holds the precision
    groups: dict[str, dict[str, dict[int, dict]]] = {}
    for r in rows:
        params = dict(r.get("params") or {})
        p = params.pop("precision", "fp32")
        for name in ("seed", "teacher_key", "team"):
            params.pop(name, None)
        groups.setdefault(stable_hash(params), {}).setdefault(p, {})[int(r["seed"])] = r
    for key, by in sorted(groups.items()):
        if not {"fp32", "bf16"} <= set(by):
            continue
        a = {s: 100 * r["score"] for s, r in by["bf16"].items()}
        b = {s: 100 * r["score"] for s, r in by["fp32"].items()}
        print(f"\n{args.task} / {args.objective}, configuration {key}: dev score (x100) by seed")
        print(f"{'seed':>4} {'fp32':>8} {'bf16':>8} {'bf16-fp32':>10} {'fp32 s':>8} {'bf16 s':>8}")
        nan = float("nan")
        for s in sorted(set(a) | set(b)):  # a seed only one side ran shows nan; paired_test then refuses to pair
            fp, bf = b.get(s, nan), a.get(s, nan)
            fp_s, bf_s = (by[p].get(s, {}).get("wall_time_s", nan) for p in ("fp32", "bf16"))
            print(f"{s:>4} {fp:8.2f} {bf:8.2f} {bf - fp:10.2f} {fp_s:8.1f} {bf_s:8.1f}")
        t = paired_test(a, b)
        print(f"bf16 - fp32: {t.mean_diff:+.2f} points, 95% CI [{t.ci_low:+.2f}, {t.ci_high:+.2f}], paired t p = {t.t_p:.3f}, "
              f"n = {t.n}" + (f" ({t.reason})" if t.reason else ""))


def main() -> None:
    argv = sys.argv[1:]
    run_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the probe (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="probe: time each shape this many times, keep the fastest")
    ap.add_argument("--paired", action="store_true", help="also train the cell at fp32 and at bf16 and pair the seeds")
    ap.add_argument("--task", default="qnli-devsplit")
    ap.add_argument("--objective", default="kd")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--results", default="runs/precision.sqlite")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    probe_figures(args.repeats)
    if args.paired:
        paired(args, run_flags)


if __name__ == "__main__":
    main()

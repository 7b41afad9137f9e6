"""Peak resident memory of a teacher's fine-tuning, the part of the main job that needs the most memory, with and
without micro-batches (``--teacher-micro-batch``), activation checkpointing and per thread count (issue 17 item 6:
the teacher's options under the 4 GiB peak). Prints a table.

    python benchmarks/memory.py                                  # mpnet-base, RTE's 128 longest examples, 2 epochs, micro-batches 0 (whole), 8, 4
    python benchmarks/memory.py --micro 0,8,4 --examples 64 --data-dir ../shared/data/glue
    python benchmarks/memory.py --micro 4,8,0,8+ckpt,0+ckpt --threads 2,1 --examples 96 --epochs 1

``N+ckpt``: micro-batches of N (0 = whole batches) with activation checkpointing of every encoder layer
(``torch.utils.checkpoint``, non-reentrant, RNG state preserved: the same dropout masks, so the same teacher; MPNet
has no switch for it in transformers, so the benchmark wraps the layers itself). ``--threads``: torch's intra-op
threads of the process. Each process applies distilbench's allocator settings (:mod:`distilbench.allocator`), as
every distilbench process does.

Each setting runs in a fresh process (peak RSS is per process) through the harness's own training loop, exactly as
`distilbench teacher` runs it: batch 16, length-grouped, AdamW, clipping, best epoch on a selection slice. The
examples are the task's longest, so every batch is as long as the main job's longest (the peak's worst case). Also
printed: examples per second, so what the memory costs in speed is on the same line. Peak RSS of the whole main
job: ``benchmarks/main_job.sh``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def checkpoint_layers(net) -> int:
    """Wrap each encoder layer's forward in ``torch.utils.checkpoint`` (activations recomputed in the backward pass);
    returns the number of layers wrapped."""
    import torch.utils.checkpoint as cp

    from distilbench.models.inits import layer_list

    _, layers = layer_list(net)
    for layer in layers:
        layer.forward = (lambda *a, _f=layer.forward, **k:
                         cp.checkpoint(_f, *a, use_reentrant=False, **k) if _f.__self__.training else _f(*a, **k))
    return len(layers)


def one(args) -> dict:
    import torch

    from distilbench.allocator import tune

    tune()
    torch.set_num_threads(args.one_threads)
    micro, ckpt = args.one.split("+")[0], args.one.endswith("+ckpt")

    from distilbench.config import RunConfig
    from distilbench.data.batching import encode
    from distilbench.training.loop.harness import train
    from distilbench.training.loop.parallel import make_accelerator
    from distilbench.models.loading import load_classifier, load_tokenizer
    from distilbench.objectives import Context, get_objective
    from distilbench.data.tasks import get_task, load_split, resolve_data_dir
    from distilbench.training.loop.precision import resolve

    task = get_task(args.task)
    tok = load_tokenizer(args.model)
    rows = load_split(task, "train", resolve_data_dir(args.data_dir))
    cfg = RunConfig(task=args.task, batch_size=args.batch_size, progress=False, mixed_precision=args.precision)
    precision = resolve(cfg.mixed_precision, cfg.cpu)[0]  # auto: decided per machine (and thread count), as a run does
    full = encode(tok, rows, cfg.max_length)
    longest = sorted(range(len(rows)), key=lambda i: -len(full.input_ids[i]))[: args.examples]
    enc, select = full.subset(longest), full.subset(longest[:16])
    torch.manual_seed(0)
    net = load_classifier(args.model, task.num_labels, task.regression, attn_implementation=None)
    if ckpt:
        checkpoint_layers(net)
    none = get_objective("none")(Context(task, cfg, [], net.config.hidden_size, None))
    start = time.perf_counter()
    result = train(net, none, None, train_enc=enc, select_enc=select, task=task, cfg=cfg, seed=0,
                   accelerator=make_accelerator(cfg, precision), epochs=args.epochs, lr=cfg.teacher_lr, micro_batch=int(micro))
    return {"micro": args.one, "threads": torch.get_num_threads(), "precision": precision, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "examples_per_s": result.examples_per_s, "seconds": time.perf_counter() - start,
            "tokens_per_batch": args.batch_size * max(len(enc.input_ids[i]) for i in range(len(enc)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mpnet-base")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--data-dir", default=None, help="GLUE_DIR layout (default: $GLUE_DIR or ../shared/data/glue)")
    ap.add_argument("--examples", type=int, default=128, help="the task's longest N training examples")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--micro", default="0,8,4",
                    help="micro-batch sizes to compare (0 = whole batches); N+ckpt adds activation checkpointing")
    ap.add_argument("--threads", default="2", help="torch thread counts to compare, comma-separated")
    ap.add_argument("--precision", default="auto", help="--mixed-precision of every row (auto, fp32, bf16)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    ap.add_argument("--one-threads", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.data_dir = args.data_dir or os.environ.get("GLUE_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one is not None:
        print(json.dumps(one(args)))
        return
    print(f"teacher fine-tuning of {args.model} on the {args.examples} longest {args.task} examples, batch {args.batch_size}, "
          f"{args.epochs} epochs, one process per row")
    print(f"{'micro-batch':>12} {'checkpointing':>13} {'threads':>7} {'precision':>9} {'peak RSS MiB':>13} {'examples/s':>11} {'seconds':>8}")
    for threads in (int(t) for t in args.threads.split(",")):
        for setting in args.micro.split(","):
            micro, ckpt = setting.split("+")[0], setting.endswith("+ckpt")
            if not micro.isdigit() or setting not in (micro, f"{micro}+ckpt"):
                sys.exit(f"--micro: {setting!r} is not N or N+ckpt (N = micro-batch size, 0 = whole batches)")
            cmd = [sys.executable, __file__, "--model", args.model, "--task", args.task, "--data-dir", args.data_dir,
                   "--examples", str(args.examples), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                   "--precision", args.precision, "--one", setting, "--one-threads", str(threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            label = "whole batch" if micro == "0" else micro
            print(f"{label:>12} {'yes' if ckpt else 'no':>13} {r['threads']:>7} {r['precision']:>9} {r['peak_rss_mib']:>13.0f} "
                  f"{r['examples_per_s']:>11.2f} {r['seconds']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()

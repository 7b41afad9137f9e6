"""The C allocator's settings (distilbench.allocator) measured: one training step of a causal-LM student (forward KL
to a live teacher + CE) and of a 3-layer base-width classification student, each in a fresh process with glibc's
default malloc and with distilbench's settings. Prints ms a step, the user and system CPU time in it, page faults a
step and the process's peak resident size. Random weights (no download); one thread unless --threads.

    python benchmarks/allocator.py [--steps 25] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _lm_step():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2(layers):
        return GPT2LMHeadModel(GPT2Config(vocab_size=8192, n_positions=128, n_embd=128, n_layer=layers, n_head=4,
                                          bos_token_id=0, eos_token_id=0))
    teacher, student = gpt2(4).eval(), gpt2(2)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    x = torch.randint(0, 8192, (16, 128))

    def step():
        with torch.no_grad():
            t = torch.log_softmax(teacher(x).logits, -1)
        logits = student(x).logits
        loss = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), t, log_target=True, reduction="batchmean")
        loss = loss + torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 8192), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _cls_step():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    student = BertForSequenceClassification(BertConfig(num_hidden_layers=3, num_labels=2))
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5)
    x, y = torch.randint(0, 30000, (16, 128)), torch.randint(0, 2, (16,))

    def step():
        loss = student(input_ids=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def child(kind: str, steps: int, threads: int) -> dict:
    from distilbench.allocator import tune

    tuned = tune()
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    step = {"lm": _lm_step, "cls": _cls_step}[kind]()
    for _ in range(3):  # warm-up
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    return {"kind": kind, "tuned": tuned, "ms": 1000 * wall / steps, "user_ms": 1000 * (r1.ru_utime - r0.ru_utime) / steps,
            "sys_ms": 1000 * (r1.ru_stime - r0.ru_stime) / steps, "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "peak_mib": r1.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads)))
        return
    print(f"{'step':<28} {'allocator':<10} {'ms/step':>8} {'user ms':>8} {'sys ms':>7} {'faults':>9} {'peak MiB':>9}")
    for kind, name in (("lm", "causal LM, vocab 8192"), ("cls", "3-layer BERT, 16 x 128")):
        for setting in ("default", "tuned"):
            env = {**os.environ, "DISTILBENCH_MALLOC": setting, "TRANSFORMERS_VERBOSITY": "error"}
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--steps", str(args.steps), "--threads",
                                  str(args.threads)], env=env, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name:<28} {setting:<10} {r['ms']:>8.0f} {r['user_ms']:>8.0f} {r['sys_ms']:>7.0f} {r['faults']:>9.0f} "
                  f"{r['peak_mib']:>9.0f}")


if __name__ == "__main__":
    main()

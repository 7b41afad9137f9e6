"""Speed and memory of the harness, measured side by side in one process on the same batches. Prints a table.

    python benchmarks/speed.py                        # mpnet-base teacher, 3-layer student, 256 RTE examples
    python benchmarks/speed.py --examples 512 --objectives kd,hid-seq --data-dir ../shared/data/glue

What it measures (issue #8), each as the time of one training epoch over the same length-grouped batches:

(a) distillation epoch ÷ plain fine-tuning epoch (``none``), for kd, hid-seq, att-kl, val-kl and ted (Stage II; its
    Stage I is printed separately), with the teacher-output cache filled beforehand (its one-off build is printed);
(b) the cache's speed-up: the same objective with ``--teacher-cache off`` (the teacher runs every step) ÷ with it;
(c) the usual recipe: a transformers ``Trainer`` subclass overriding ``compute_loss`` with the teacher in the loop
    (DataCollatorWithPadding, its default random sampler, the same batch size, lr, optimiser and KD loss): our kd
    epoch ÷ its epoch;
(f) harness overhead: our ``none`` epoch ÷ a bare PyTorch loop doing the same forward/backward/AdamW step on the same
    batches;
(d) peak resident memory of this process;
(g) roofline: the student training step's achieved GFLOP/s (its FLOPs counted by ``torch.utils.flop_counter.
    FlopCounterMode`` over one bare epoch's forward and backward passes, divided by the bare loop's and the ``none``
    epoch's time), the machine's matmul peak measured in this process at the same threads (fp32, and bf16 where the
    hardware has it: a CUDA device with bf16, a CPU with AMX-BF16 or AVX512-BF16), and achieved ÷ peak.

Rows (a) and (f) are each timed ``--repeats`` times (default 3), interleaved, and the fastest epoch is kept: one epoch
is ~30 s, and on a 2-core machine a single timing moved by ±10% from run to run.

The teacher is the pretrained model with a fresh task head: its weights do not change its speed, so no fine-tuning is
needed here. Everything runs at the precision ``--mixed-precision auto`` resolves to (fp32 on a CPU without bf16
hardware; printed in the header). (e), the main job's wall time, is measured by ``benchmarks/main_job.sh``.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distilbench.config import RunConfig  # noqa: E402
from distilbench.data.batching import BatchLoader, encode, length_grouped_batches, subsample  # noqa: E402
from distilbench.training.loop.harness import TeacherSource, model_outputs, train  # noqa: E402
from distilbench.training.loop.parallel import fused_adamw, make_accelerator  # noqa: E402
from distilbench.models.inits import copy_layers  # noqa: E402
from distilbench.models.loading import load_classifier, load_tokenizer  # noqa: E402
from distilbench.objectives import Context, Needs, get_objective  # noqa: E402
from distilbench.training.loop.precision import bf16_matmul_native, matmul_gflops, resolve  # noqa: E402
from distilbench.data.tasks import get_task, load_split, resolve_data_dir  # noqa: E402
from distilbench.training.teachers.teacher_cache import open_or_build, parts_for  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="mpnet-base")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--data-dir", default=None, help="GLUE_DIR layout (default: $GLUE_DIR or ../shared/data/glue)")
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--student-layers", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--objectives", default="kd,hid-seq,att-kl,val-kl,ted")
    ap.add_argument("--no-trainer", action="store_true", help="skip (c)")
    ap.add_argument("--repeats", type=int, default=3, help="time each row of (a) and (f) this many times, keep the fastest")
    ap.add_argument("--peak-size", type=int, default=2048, help="(g): the square matmul (N x N times N x N) that measures the peak")
    args = ap.parse_args()

    data_dir = args.data_dir or os.environ.get("GLUE_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    task = get_task(args.task)
    examples = subsample(load_split(task, "train", resolve_data_dir(data_dir)), args.examples)
    select = examples[:16]  # each epoch ends with a selection pass: keep it tiny and equal for every row
    cfg = RunConfig(task=args.task, batch_size=args.batch_size, epochs=1, lr=5e-5, select_best_epoch=False, progress=False)
    precision, why = resolve(cfg.mixed_precision, cfg.cpu)
    acc = make_accelerator(cfg, precision)
    tok = load_tokenizer(args.teacher)
    enc, sel = encode(tok, examples, cfg.max_length), encode(tok, select, cfg.max_length)
    torch.manual_seed(0)
    teacher = load_classifier(args.teacher, task.num_labels, task.regression, attn_implementation=None).eval().to(acc.device)
    layers = list(range(1, args.student_layers + 1))
    pairs = list(enumerate(layers, start=1))

    def student():
        return copy_layers(teacher, tuple(layers), 0)[0]

    def ctx():
        return Context(task, cfg, pairs, teacher.config.hidden_size, teacher.config.hidden_size,
                       student_heads=teacher.config.num_attention_heads, teacher_heads=teacher.config.num_attention_heads,
                       teacher_model=teacher)

    @torch.no_grad()
    def logits_table() -> torch.Tensor:
        out = torch.zeros(max(e.idx for e in examples) + 1, task.num_labels)
        for ids, batch in zip(*(lambda b: (b, BatchLoader(enc, b, False)))(length_grouped_batches(enc.lengths(), 64, 0, 0))):
            with acc.autocast():  # the run's precision, as the harness computes its caches
                out[batch["idx"]] = model_outputs(teacher, {k: v.to(acc.device) for k, v in batch.items()}, Needs()).logits.float().cpu()
        return out

    rows: list[tuple[str, float, str]] = []
    t0 = time.perf_counter()
    table = logits_table()
    rows.append(("cache build: logits", time.perf_counter() - t0, "one-off, per teacher and data"))
    tmp = Path(tempfile.mkdtemp(prefix="distilbench-speed-"))
    caches = {}

    def epoch(name: str, cached: bool = True) -> tuple[float, object]:
        obj = get_objective(name)(ctx())
        source = None
        if obj.uses_teacher:
            outputs = None
            if cached and obj.needs != Needs(logits=True, token_aligned=obj.needs.token_aligned):
                parts = parts_for(obj.needs)
                if parts not in caches:
                    start = time.perf_counter()
                    def run_teacher(b):
                        with acc.autocast():
                            return model_outputs(teacher, {k: v.to(acc.device) for k, v in b.items()}, obj.needs)
                    caches[parts] = open_or_build(tmp, "speed", enc, "speed", layers, parts, "fp32", run_teacher,
                                                  teacher.config.num_hidden_layers, 64, precision=precision)
                    rows.append((f"cache build: {', '.join(parts)}", time.perf_counter() - start, "one-off"))
                outputs = [caches[parts]]
            source = TeacherSource([teacher], obj.needs, [table] if cached else None, False, outputs, layers)
        result = train(student(), obj, source, train_enc=enc, select_enc=sel, task=task, cfg=cfg, seed=0, accelerator=acc,
                       epochs=1, lr=cfg.lr)
        stage = [s for s in result.stage_times if s != "filters"][-1]
        return result.stage_times[stage], result

    # (f) a bare loop: same model, batches, optimiser, schedule-free (the schedule costs nothing measurable)
    def bare_epoch() -> float:
        model = student().to(acc.device).train()
        opt = torch.optim.AdamW([p for p in model.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=fused_adamw(acc.device))
        torch.manual_seed(0)
        start = time.perf_counter()
        for batch in BatchLoader(enc, length_grouped_batches(enc.lengths(), cfg.batch_size, 0, 0), task.regression):
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.autocast():
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    names = [o for o in args.objectives.split(",") if o]
    epoch("none")  # warm-up: first-call allocations and kernel selection are not part of any row
    # (g) the FLOPs of one epoch's training steps, counted (not timed: the counter slows what it watches) on a bare
    # epoch over the same batches; it doubles as the bare loop's warm-up
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        bare_epoch()
    step_flops = counter.get_total_flops()
    # ratio (a) compares epochs of ~30 s on a shared machine: every row is timed `repeats` times, interleaved (so a slow
    # minute hits every row alike), and the fastest is kept, as timeit does
    best: dict[str, tuple[float, object]] = {}
    for _ in range(args.repeats):
        for name in ["none", "bare", *names]:
            t, result = (bare_epoch(), None) if name == "bare" else epoch(name)
            if name not in best or t < best[name][0]:
                best[name] = (t, result)
    plain, bare = best["none"][0], best["bare"][0]
    rows.append(("none (plain fine-tuning)", plain, f"{len(enc) / plain:.1f} ex/s"))
    rows.append(("bare PyTorch loop", bare, f"(f) none / bare = {plain / bare:.3f}"))

    ratios = {}
    for name in names:
        t, result = best[name]
        ratios[name] = t / plain
        note = f"(a) / none = {t / plain:.3f}"
        if "filters" in result.stage_times:
            note += f"; Stage I {result.stage_times['filters']:.1f} s"
        rows.append((f"{name} (cached teacher)", t, note))
        if name in ("kd", "hid-seq", "att-kl"):
            off, _ = epoch(name, cached=False)
            rows.append((f"{name} (teacher every step)", off, f"(b) cache speed-up = {off / t:.2f}x"))

    if not args.no_trainer and "kd" in ratios:
        trainer_time = trainer_kd(teacher, student(), enc, task, cfg, tmp, tok)
        ours = ratios["kd"] * plain
        rows.append(("Trainer subclass, KD in compute_loss", trainer_time, f"(c) ours / Trainer = {ours / trainer_time:.3f}"))

    width = max(len(r[0]) for r in rows)
    print(f"\n{args.examples} {task.name} examples, batch {cfg.batch_size}, teacher {args.teacher}, student {args.student_layers} "
          f"layers, device {acc.device}, torch threads {torch.get_num_threads()}, precision {precision} ({why})\n")
    print(f"{'measurement':<{width}}  {'seconds':>8}  note")
    for name, secs, note in rows:
        print(f"{name:<{width}}  {secs:8.2f}  {note}")
    print(f"\n(a) distillation epoch / plain epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print(f"(d) peak resident memory of this process: {rss_mb():.0f} MiB")
    steps = len(length_grouped_batches(enc.lengths(), cfg.batch_size, 0, 0))
    roofline(step_flops, bare, plain, steps, acc.device, args.peak_size, precision)


def roofline(step_flops: int, bare_s: float, none_s: float, steps: int, device, size: int,
             precision: str = "fp32") -> None:
    """(g): achieved GFLOP/s of the student's training steps against this process's measured matmul peak. The steps
    ran at ``precision``: that peak is the limit (under bf16 autocast the fp32 ratio can exceed 1)."""
    shape = ((size, size, size),)
    peaks = {"fp32": matmul_gflops(shape, False, device)}
    native, why = bf16_matmul_native(device)
    if native:
        peaks["bf16"] = matmul_gflops(shape, True, device)
    print(f"\n(g) roofline, torch threads {torch.get_num_threads()}, device {device}:")
    print(f"    student training step: {step_flops / steps / 1e9:.2f} GFLOP per step (FlopCounterMode, forward + "
          f"backward, mean of {steps} steps), {step_flops / 1e9:.1f} GFLOP per epoch")
    for name, peak in peaks.items():
        print(f"    matmul peak {name} ({size}x{size}x{size}): {peak:.1f} GFLOP/s")
    if not native:
        print(f"    matmul peak bf16: n/a ({why})")
    # the none epoch also runs its selection pass (16 examples, forward only), whose FLOPs are not counted here
    for label, secs in (("bare loop", bare_s), ("none epoch (harness)", none_s)):
        achieved = step_flops / secs / 1e9
        print(f"    achieved, {label}: {achieved:.1f} GFLOP/s = " + ", ".join(
            f"{achieved / peak:.3f} of the {name} peak" for name, peak in peaks.items()))
    print(f"    (the steps ran in {precision}: read the {precision} peak's ratio)")


def trainer_kd(teacher, student, enc, task, cfg, tmp: Path, tokenizer) -> float:
    """KD the way it is usually written: a Trainer subclass with the teacher's forward pass inside compute_loss."""
    import datasets
    import torch.nn.functional as F
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    class KDTrainer(Trainer):
        def __init__(self, *a, teacher_model=None, temperature=2.0, alpha=1.0, **k):
            super().__init__(*a, **k)
            self.teacher_model, self.temperature, self.alpha = teacher_model, temperature, alpha

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            out = model(**inputs)
            with torch.no_grad():
                t_logits = self.teacher_model(**inputs).logits
            t = self.temperature
            kd = F.kl_div(F.log_softmax(out.logits / t, -1), F.log_softmax(t_logits / t, -1), reduction="batchmean", log_target=True)
            loss = F.cross_entropy(out.logits, labels) + self.alpha * t * t * kd
            return (loss, out) if return_outputs else loss

    columns = {"input_ids": enc.input_ids, "attention_mask": [[1] * len(x) for x in enc.input_ids],
               "labels": [e.label for e in enc.examples]}
    if enc.token_type_ids is not None:
        columns["token_type_ids"] = enc.token_type_ids
    ds = datasets.Dataset.from_dict(columns)
    collator = DataCollatorWithPadding(tokenizer)  # pads each batch to its longest example
    args = TrainingArguments(output_dir=str(tmp / "trainer"), per_device_train_batch_size=cfg.batch_size, num_train_epochs=1,
                             learning_rate=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio,
                             max_grad_norm=cfg.max_grad_norm, report_to=[], save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, dataloader_num_workers=0, seed=0, use_cpu=not torch.cuda.is_available())
    trainer = KDTrainer(model=student, args=args, train_dataset=ds, data_collator=collator, teacher_model=teacher)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

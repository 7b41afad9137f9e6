"""What a model costs to keep and to run: parameter counts, size on disk, inference latency and throughput.

Measured at run time and stored in each student row (``extra.profile``, see :func:`row_profile`), never at report
time: a report must rebuild from the store alone, and a latency measured later would describe another machine.

**Size.** ``params``: every parameter of the model (task head included). ``params_no_embeddings``: the same without
the parameters of its ``nn.Embedding`` modules (word, position, token-type embeddings: the part a smaller vocabulary
would shrink; transformers' ``num_parameters(exclude_embeddings=True)`` counts the same way). ``size_bytes``: the
length of the model's ``state_dict`` serialised by ``safetensors.torch.save`` (what ``save_pretrained`` writes,
without config and tokenizer files), tensors that share storage counted once.

**Speed.** A forward pass of batch 1 and batch 32 at sequence length 128 (every position a real token, ids drawn
with a fixed seed) under ``torch.inference_mode``, in the model's own dtype: one warm-up forward, then the median of
:data:`REPEATS` timed forwards (at least :data:`MIN_REPEATS`; it stops after :data:`BUDGET_S` seconds of timing once
it has them: a base-size teacher's batch of 32 takes seconds on 2 cores). On the CPU with the run's thread count
(``torch.set_num_threads``), and on the GPU where one is present. Throughput = batch × 1000 / median ms.

Latency depends on the architecture and the machine only, not on the objective, seed or weights, so it is measured
once per (architecture fingerprint, machine, device, threads) and kept as a small JSON file under
``<cache>/profiles/``: the runner measures in the calling process before worker processes start (a measurement
beside training workers would time the contention, not the model), and workers and reruns read the file.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...hashing import stable_hash
from ...models.loading import cache_dir
from ..teachers.teacher import atomic_write_json, file_lock

FORMAT = "1"
SEQ_LEN = 128
BATCHES = (1, 32)
WARMUP = 1
REPEATS = 5
MIN_REPEATS = 3
BUDGET_S = 10.0
# config entries that name or label a model without changing its computation: two students copied from different
# teacher folders, or fine-tuned for another task with as many labels, are one architecture
_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "id2label", "label2id", "problem_type", "architectures",
                     "output_attentions", "output_hidden_states", "return_dict", "torch_dtype", "dtype")


# --------------------------------------------------------------------------- size


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(all parameters, parameters outside ``nn.Embedding`` modules); a shared tensor counts once."""
    seen: set[int] = set()
    total = embedding = 0
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    for p in model.parameters():  # parameters() already yields a tied tensor once; the set guards the embedding sum
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        embedding += p.numel() if id(p) in embedding_ids else 0
    return total, total - embedding


def state_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors takes it: contiguous CPU tensors, a tensor shared by several names kept under
    its first name only (safetensors refuses shared storage; ``save_pretrained`` drops the duplicates the same way)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, t in model.state_dict().items():
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in seen:
            continue
        seen.add(ident)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as one safetensors file."""
    from safetensors.torch import save

    return len(save(state_for_saving(model)))


# --------------------------------------------------------------------------- identity of what is measured


def architecture(model: nn.Module) -> dict[str, Any]:
    """What the forward pass's cost depends on: the model class, its config without names and labels (the label
    count stays: it sizes the head) and the parameters' dtype. Not the attention implementation: every model here
    loads with transformers' default, and the capturing one that attention objectives switch a student to while it
    trains (:mod:`distilbench.models.capture`) hands over to it; the trained student is the architecture measured before."""
    config = model.config.to_dict()
    return {"class": type(model).__name__, "num_labels": int(model.config.num_labels),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "config": {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}}


def arch_fingerprint(model: nn.Module) -> str:
    return stable_hash(architecture(model))


def machine() -> dict[str, Any]:
    """This machine, as latency depends on it: the CPU model, its core count, the torch build."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "arch": platform.machine(), "torch": torch.__version__}


def devices() -> list[str]:
    """Where latency is measured: the CPU always, and the GPU where one is present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else machine()["cpu"]


# --------------------------------------------------------------------------- latency


def _inputs(model: nn.Module, batch: int, seq_len: int, device: str) -> dict[str, torch.Tensor]:
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(batch, seq_len, dtype=torch.long, device=device)}


def seq_len_for(model: nn.Module) -> int:
    """:data:`SEQ_LEN`, unless the model's position table is shorter (RoBERTa-style models offset positions by 2)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    return min(SEQ_LEN, positions - 2) if positions else SEQ_LEN


def time_forward(model: nn.Module, batch: int, seq_len: int, device: str) -> list[float]:
    """Milliseconds of each timed forward (after :data:`WARMUP` untimed ones)."""
    inputs = _inputs(model, batch, seq_len, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(WARMUP):
            model(**inputs)
        sync()
        spent = 0.0
        while len(times) < REPEATS and (len(times) < MIN_REPEATS or spent < BUDGET_S):
            start = time.perf_counter()
            model(**inputs)
            sync()
            times.append(1000 * (time.perf_counter() - start))
            spent += times[-1] / 1000
    return times


def measure(model: nn.Module, device: str, threads: int) -> dict[str, Any]:
    """Latency and throughput of ``model`` on ``device`` with ``threads`` CPU threads, for every batch of
    :data:`BATCHES`; the model comes back in its device and train/eval mode."""
    was_training = model.training
    home = next(model.parameters()).device
    old_threads = torch.get_num_threads()
    seq_len = seq_len_for(model)
    try:
        torch.set_num_threads(threads)
        model.eval().to(device)
        out: dict[str, Any] = {"threads": threads, "seq_len": seq_len, "device_name": device_name(device),
                               "attn_implementation": getattr(model.config, "_attn_implementation", None)}
        for b in BATCHES:
            times = time_forward(model, b, seq_len, device)
            ms = statistics.median(times)
            out[f"b{b}"] = {"ms": ms, "per_s": b * 1000 / ms, "runs": len(times)}
        return out
    finally:
        torch.set_num_threads(old_threads)
        model.to(home).train(was_training)


def _path(fingerprint: str, device: str, threads: int) -> Path:
    key = stable_hash({"format": FORMAT, "arch": fingerprint, "machine": machine(), "node": platform.node(),
                       "device": device, "threads": threads, "batches": list(BATCHES), "seq_len": SEQ_LEN})
    return cache_dir() / "profiles" / f"{fingerprint}-{device}-{threads}t-{key}.json"


def model_profile(model: nn.Module, threads: int, measure_missing: bool = True) -> dict[str, Any] | None:
    """Size and speed of ``model``: from the profile cache, else measured now and cached (None when missing and
    ``measure_missing`` is False). ``{"arch", "params", "params_no_embeddings", "size_bytes", "dtype",
    "latency": {device: {"threads", "seq_len", "device_name", "b1": {"ms", "per_s", "runs"}, "b32": {...}}}}``."""
    fingerprint = arch_fingerprint(model)
    found: dict[str, Any] = {}
    for device in devices():
        path = _path(fingerprint, device, threads)
        if not path.exists():
            if not measure_missing:
                return None
            with file_lock(path.with_suffix(".lock")):  # two processes at once: one measures, the other reads
                if not path.exists():
                    total, no_embeddings = param_counts(model)
                    atomic_write_json(path, {"format": FORMAT, "arch": fingerprint, "machine": machine(),
                                             "device": device, "params": total, "params_no_embeddings": no_embeddings,
                                             "size_bytes": serialized_bytes(model),
                                             "dtype": architecture(model)["dtype"],
                                             "latency": measure(model, device, threads)})
        found[device] = json.loads(path.read_text())
    first = found["cpu"]
    return {"arch": fingerprint, "params": first["params"], "params_no_embeddings": first["params_no_embeddings"],
            "size_bytes": first["size_bytes"], "dtype": first["dtype"], "machine": first["machine"],
            "latency": {device: f["latency"] for device, f in found.items()}}


# --------------------------------------------------------------------------- what a row stores


def pair_profiles(student: nn.Module, teacher: nn.Module, threads: int, log) -> list:
    """[student's, teacher's] size and speed; [None, None] when measuring fails (reported through ``log``): a finished
    run is never lost to its measurement, its row then reads n/a there."""
    try:
        return [model_profile(student, threads), model_profile(teacher, threads)]
    except Exception as exc:  # noqa: BLE001 - out of memory on a GPU, an unwritable cache, ...
        log(f"[bold red]size and speed not measured: {type(exc).__name__}: {exc}[/]")
        return [None, None]


def retained(score: float | None, teacher_score: float | None, higher_is_better: bool = True) -> float | None:
    """The share of the teacher's score the student keeps, on the task's main score (1.0 = as good as the teacher).

    Higher-is-better scores (every GLUE metric: accuracy, F1, MCC, Pearson/Spearman correlation): student / teacher;
    lower-is-better ones: teacher / student, so that above 1 still reads "better than the teacher". None where the
    ratio means nothing: a missing score, or a denominator at or below zero (an MCC or correlation teacher no better
    than chance; a zero error). A student below zero on a correlation or MCC gets a negative share."""
    if score is None or teacher_score is None:
        return None
    num, den = (score, teacher_score) if higher_is_better else (teacher_score, score)
    return num / den if den > 0 else None


def ratios(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    """Speed-up (teacher ms / student ms) per device and batch, and size ratio (teacher bytes / student bytes:
    how many times smaller the student is)."""
    speedup = {}
    for device, lat in student["latency"].items():
        t = teacher["latency"].get(device)
        if t is not None:
            speedup[device] = {f"b{b}": t[f"b{b}"]["ms"] / lat[f"b{b}"]["ms"] for b in BATCHES if f"b{b}" in lat and f"b{b}" in t}
    return {"speedup": speedup, "size_ratio": teacher["size_bytes"] / student["size_bytes"]}


def row_profile(student: dict[str, Any] | None, teacher: dict[str, Any] | None, score: float, teacher_score: float | None,
                higher_is_better: bool, cost: dict[str, Any]) -> dict[str, Any]:
    """``extra.profile`` of a student row: both models' size and speed, the ratios, the retained share and the
    training cost (:mod:`distilbench.training.teachers.cost`)."""
    out: dict[str, Any] = {"format": FORMAT, "student": student, "teacher": teacher,
                           "retained": retained(score, teacher_score, higher_is_better), "cost": cost}
    if student is not None and teacher is not None:
        out.update(ratios(student, teacher))
    return out


__all__ = ["param_counts", "serialized_bytes", "model_profile", "pair_profiles", "measure", "retained", "ratios", "row_profile"]


def profile_pair(student, teacher_net, threads: int | None, log) -> None:
    """Size and speed of the teacher and of the student's architecture with ``threads`` CPU threads (the runs'),
    measured once per machine and cached (:func:`pair_profiles`): before worker processes start, since a latency timed
    beside training workers would measure their contention; the runs read the cache."""
    threads = threads or torch.get_num_threads()
    found = pair_profiles(student, teacher_net, threads, log)
    if None not in found:
        log(f"size and speed (batch 1 on the cpu, {threads} thread(s)): " + ", ".join(
            f"{who} {p['params'] / 1e6:.2f}M params, {p['latency']['cpu']['b1']['ms']:.1f} ms"
            for who, p in zip(("student", "teacher"), found)))

"""The teacher-output cache: what an objective reads from a frozen teacher, computed once, read from disk ever after.

A frozen teacher in eval mode is a pure function of its input, so its hidden states, pre-softmax attention scores and
per-head values for the **mapped layers only** are computed once per (teacher, data, tokenisation, layers, parts,
precision) and reused by every epoch, seed and objective; the teacher then never runs during student training.

Layout: one folder per content key beside the cached teacher, ``outputs-KEY/``, holding flat ``numpy.memmap`` files
(memory-mapped, read batch by batch: the cache never has to fit in memory) and ``index.json``:

- ``hidden.f32`` (or ``.f16``): ``[total_tokens, n_layers, d]`` — every example's real tokens, one after another;
- ``v.f32``: ``[total_tokens, n_layers, H * d_h]`` — per-head values, heads concatenated;
- ``scores.f32``: flat, example ``j`` holds ``[n_layers, H, L_j, L_j]`` at its own offset;
- ``index.json``: the key's inputs, row index (``Example.idx``) → position, token offsets and lengths.

Only real tokens are stored (no padding), so a batch is re-padded to its own longest example; objectives mask padded
positions, so a padded slot's value never matters. The key hashes everything the values depend on: a changed
teacher, data, ``--max-length``, layer set, part set or precision builds a new folder. The folder is written under a
file lock into a temporary name and renamed into place, so two runs filling it at once build it once and a killed run
leaves nothing half-written. ``fp16`` halves the disk and read cost at ~1e-3 relative precision (``--teacher-cache
fp16``); ``fp32`` (default) reproduces the live teacher to float rounding.

Where it cannot apply, the teacher runs every step: ``--teacher-cache off``; an objective with
``teacher_cache = False`` (one that reads attention probabilities, queries or keys, or needs the teacher in train mode,
e.g. with dropout on, or sees augmented inputs that the cache never saw).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...hashing import stable_hash
from ...data.batching import BatchLoader, Encoded, eval_batches, fingerprint
from ...objectives import Needs, Outputs
from ..loop.precision import identity_part
from .teacher import file_lock

FORMAT = "1"
# a memory map keeps every page it touched resident (counted in the process's RSS, as file pages) until it is unmapped:
# re-mapping after this many bytes written or read keeps a process's share of a cache near this size, not the cache's
REMAP_BYTES = 256 << 20
DTYPES = {"fp32": (np.float32, "f32"), "fp16": (np.float16, "f16")}


def parts_for(needs: Needs) -> tuple[str, ...]:
    """The teacher tensors an objective's needs call for: hidden states; pre-softmax scores and values of attention."""
    return (("hidden",) if needs.hidden_states else ()) + (("scores", "v") if needs.attentions else ())


@dataclass
class OutputCache:
    folder: Path
    layers: list[int]  # teacher layers held, 1-based
    parts: tuple[str, ...]
    heads: int
    hidden: int
    n_layers_total: int
    position: dict[int, int]  # Example.idx -> position in the cache
    tok_offset: np.ndarray
    lengths: np.ndarray
    score_offset: np.ndarray
    arrays: dict[str, np.memmap]
    suffix: str  # the files' dtype suffix (f32, f16)
    build_s: float | None = None  # seconds it took to compute (a shared part of every run reading it: distilbench.training.teachers.cost)
    read: int = 0  # bytes read through the current maps (REMAP_BYTES)

    def covers(self, needs: Needs, layers: list[int]) -> bool:
        return set(parts_for(needs)) <= set(self.parts) and set(layers) <= set(self.layers)

    def outputs(self, idx: torch.Tensor, logits: torch.Tensor, device) -> Outputs:
        """The teacher's Outputs for a batch of examples (their ``idx``), padded to the longest of them."""
        if self.read >= REMAP_BYTES:  # drop the pages read so far from this process
            self.arrays, self.read = _remap(self.folder, self.arrays, self.suffix, "r"), 0
        pos = [self.position[int(i)] for i in idx.tolist()]
        lens = [int(self.lengths[p]) for p in pos]
        b, width, n = len(pos), max(lens), len(self.layers)
        hidden_states = attentions = None
        if "hidden" in self.parts:
            h = np.zeros((b, width, n, self.hidden), dtype=np.float32)
            for r, (p, length) in enumerate(zip(pos, lens)):
                o = int(self.tok_offset[p])
                chunk = self.arrays["hidden"][o:o + length]
                h[r, :length] = chunk
                self.read += chunk.nbytes
            h_t = torch.from_numpy(h).to(device)
            hidden_states = [None] * (self.n_layers_total + 1)
            for j, layer in enumerate(self.layers):
                hidden_states[layer] = h_t[:, :, j]
        if "scores" in self.parts:
            d_h = self.hidden // self.heads
            s = np.zeros((b, n, self.heads, width, width), dtype=np.float32)
            v = np.zeros((b, width, n, self.hidden), dtype=np.float32)
            for r, (p, length) in enumerate(zip(pos, lens)):
                o, so = int(self.tok_offset[p]), int(self.score_offset[p])
                scores, values = self.arrays["scores"][so:so + n * self.heads * length * length], self.arrays["v"][o:o + length]
                s[r, :, :, :length, :length] = scores.reshape(n, self.heads, length, length)
                v[r, :length] = values
                self.read += scores.nbytes + values.nbytes
            s_t = torch.from_numpy(s).to(device)
            v_t = torch.from_numpy(v).to(device).view(b, width, n, self.heads, d_h).permute(2, 0, 3, 1, 4)  # n,B,H,L,d_h
            attentions = [None] * self.n_layers_total
            for j, layer in enumerate(self.layers):
                attentions[layer - 1] = {"scores": s_t[:, j], "v": v_t[j]}
        return Outputs(logits, tuple(hidden_states) if hidden_states is not None else None, attentions)



def _remap(folder: Path, arrays: dict[str, np.memmap], suffix: str, mode: str) -> dict[str, np.memmap]:
    """``arrays``' files mapped again (``mode`` "r" or "r+"), written ones flushed first: the old maps are dropped, and
    with them the pages they kept resident."""
    if mode == "r+":
        for a in arrays.values():
            a.flush()
    return {name: np.load(folder / f"{name}.{suffix}.npy", mmap_mode=mode) for name in arrays}


def cache_key(teacher_key: str, enc: Encoded, tokenisation: str, layers: list[int], parts: tuple[str, ...], dtype: str,
              precision: str = "fp32") -> str:
    """``dtype`` is how the values are stored (fp32 | fp16); ``precision`` how the teacher computed them (absent from
    the key for fp32, so fp32 caches keep their folders)."""
    tokens = hashlib.sha256(json.dumps([enc.input_ids, enc.token_type_ids]).encode()).hexdigest()[:16]
    return stable_hash({"format": FORMAT, "teacher": teacher_key, "data": fingerprint(enc.examples), "tokens": tokens,
                        "tokenisation": tokenisation, "layers": sorted(layers), "parts": sorted(parts), "dtype": dtype,
                        **identity_part(precision)})


def open_or_build(folder_root: Path, teacher_key: str, enc: Encoded, tokenisation: str, layers: list[int],
                  parts: tuple[str, ...], dtype: str, run_teacher: Callable[[dict], Outputs], n_layers_total: int,
                  batch_size: int = 64, log: Callable[[str], None] = lambda m: None, precision: str = "fp32") -> OutputCache:
    """Open the cache for these inputs, computing it first (``run_teacher(batch) -> Outputs`` on eval batches, which
    computes at ``precision``: the run's :meth:`TeacherInference.outputs` of the teacher) when it does not exist yet."""
    if dtype not in DTYPES:
        raise ValueError(f"teacher cache precision must be one of {', '.join(DTYPES)} (got {dtype!r})")
    layers = sorted(set(layers))
    key = cache_key(teacher_key, enc, tokenisation, layers, parts, dtype, precision)
    folder = folder_root / f"outputs-{key}"
    if not (folder / "index.json").exists():
        with file_lock(folder_root / f".outputs-{key}.lock"):
            if not (folder / "index.json").exists():
                log(f"teacher-output cache: computing {', '.join(parts)} of layers {layers} for {len(enc)} examples "
                    f"({dtype}{'' if precision == 'fp32' else f', computed in {precision}'}) -> {folder}")
                _build(folder, enc, layers, parts, dtype, run_teacher, batch_size, {"key": key, "teacher": teacher_key,
                       "tokenisation": tokenisation, "n_layers_total": n_layers_total, "precision": precision})
    return _open(folder)


def _build(folder: Path, enc: Encoded, layers: list[int], parts: tuple[str, ...], dtype: str,
           run_teacher: Callable[[dict], Outputs], batch_size: int, meta: dict) -> None:
    np_dtype, suffix = DTYPES[dtype]
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".tmp-{folder.name}-"))
    try:
        lengths = enc.lengths()
        tok_offset = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total = int(lengths.sum())
        n = len(layers)
        arrays: dict[str, np.memmap] = {}
        shapes: dict[str, list[int]] = {}
        heads = hidden = None
        score_offset = np.zeros(len(enc), dtype=np.int64)
        order = eval_batches(lengths, batch_size)
        written = 0
        for ids, batch in zip(order, BatchLoader(enc, order, False)):
            if written >= REMAP_BYTES:  # the pages written so far leave this process's RSS
                arrays, written = _remap(tmp, arrays, suffix, "r+"), 0
            with torch.no_grad():  # a frozen teacher's outputs: whatever the caller's grad mode, nothing here learns
                out = run_teacher(batch)
            if hidden is None:  # sizes from the first batch: allocate every file once
                hidden = int(out.hidden_states[layers[0]].shape[-1]) if "hidden" in parts else int(
                    out.attentions[layers[0] - 1]["v"].shape[1] * out.attentions[layers[0] - 1]["v"].shape[-1])
                heads = int(out.attentions[layers[0] - 1]["v"].shape[1]) if "scores" in parts else 1
                if "hidden" in parts:
                    shapes["hidden"] = [total, n, hidden]
                if "scores" in parts:
                    score_offset = np.concatenate([[0], np.cumsum(n * heads * lengths.astype(np.int64) ** 2)[:-1]]).astype(np.int64)
                    shapes["scores"] = [int((n * heads * lengths.astype(np.int64) ** 2).sum())]
                    shapes["v"] = [total, n, hidden]
                for name, shape in shapes.items():
                    arrays[name] = np.lib.format.open_memmap(tmp / f"{name}.{suffix}.npy", mode="w+", dtype=np_dtype, shape=tuple(shape))
            for r, j in enumerate(ids):
                length, o = int(lengths[j]), int(tok_offset[j])
                if "hidden" in parts:
                    arrays["hidden"][o:o + length] = torch.stack([out.hidden_states[t][r, :length] for t in layers], 1).float().cpu().numpy()
                    written += arrays["hidden"][o:o + length].nbytes
                if "scores" in parts:
                    sc = torch.stack([out.attentions[t - 1]["scores"][r, :, :length, :length] for t in layers], 0)
                    so = int(score_offset[j])
                    arrays["scores"][so:so + sc.numel()] = sc.float().cpu().numpy().reshape(-1)
                    vv = torch.stack([out.attentions[t - 1]["v"][r, :, :length].transpose(0, 1).reshape(length, -1) for t in layers], 1)
                    arrays["v"][o:o + length] = vv.float().cpu().numpy()
                    written += arrays["scores"][so:so + sc.numel()].nbytes + arrays["v"][o:o + length].nbytes
        for a in arrays.values():
            a.flush()
        index = {**meta, "format": FORMAT, "layers": layers, "parts": list(parts), "dtype": dtype, "suffix": suffix,
                 "heads": heads, "hidden": hidden, "idx": _row_ids(enc), "lengths": lengths.tolist(),
                 "tok_offset": tok_offset.tolist(), "score_offset": score_offset.tolist(),
                 "build_s": time.perf_counter() - start}
        (tmp / "index.json").write_text(json.dumps(index))
        del arrays
        os.replace(tmp, folder)  # atomic: the folder appears complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _row_ids(enc) -> list[int]:
    """The cache's key of each row: the example's ``idx``, or an extractive QA window's number (``window_idx``)."""
    window_idx = getattr(enc, "window_idx", None)
    return list(window_idx) if window_idx is not None else [e.idx for e in enc.examples]


def _open(folder: Path) -> OutputCache:
    index = json.loads((folder / "index.json").read_text())
    names = (["hidden"] if "hidden" in index["parts"] else []) + (["scores", "v"] if "scores" in index["parts"] else [])
    arrays = {name: np.load(folder / f"{name}.{index['suffix']}.npy", mmap_mode="r") for name in names}
    return OutputCache(folder, index["layers"], tuple(index["parts"]), index["heads"], index["hidden"], index["n_layers_total"],
                       {int(i): p for p, i in enumerate(index["idx"])}, np.array(index["tok_offset"]), np.array(index["lengths"]),
                       np.array(index["score_offset"]), arrays, index["suffix"], index.get("build_s"))

"""The top-k teacher-output cache of a causal-LM run (``--teacher-topk K``): for every training block, the teacher's K
most probable next tokens per position with their log-probabilities at ``--temperature``, and the log of the mass of
all the other tokens (:class:`distilbench.objectives.distributions.TopKTeacher`). Computed once per (teacher, blocks,
K, T), stored beside the teacher (written under a lock, renamed into place), and read by every epoch and every
objective that reads only the teacher's logits (kd, kd-reverse, gkd-jsd); the teacher then does not run.

What it does to the divergence: the student is compared on K + 1 outcomes (the top-k tokens and "any other"), so
the teacher's preferences among its tail tokens are lost; the KL's error per position is at most
:func:`~distilbench.objectives.distributions.topk_kl_error_bound` (``r_T * KL(tail_T || tail_S)``, r_T = the
teacher's rest mass), which vanishes as K grows (``tests/test_distributions.py`` measures it against the exact KL).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time

import numpy as np
import torch

from ...data.lm import LMBlocks, collate_blocks
from ...hashing import stable_hash
from ...objectives import Needs, Outputs
from ...objectives.distributions import TopKTeacher, topk_teacher
from ..loop.outputs import TeacherSource
from .teacher import TeacherRecord, file_lock


class TopKSource(TeacherSource):
    """The teacher's top-k next-token distributions of each training block, from the cache: ``Outputs(logits=
    TopKTeacher)``, rows indexed by the batch's ``idx`` (the block's number in its part)."""

    def __init__(self, teacher_net, needs: Needs, table: dict):
        super().__init__([teacher_net], needs)
        self.table = table

    def covered(self, i: int) -> bool:
        return True

    @torch.no_grad()
    def __call__(self, batch: dict, i: int = 0) -> Outputs:
        idx, device = batch["idx"].cpu(), batch["input_ids"].device
        t = self.table
        return Outputs(TopKTeacher(t["indices"][idx].long().to(device), t["log_probs"][idx].float().to(device),
                                   t["log_rest"][idx].float().to(device), float(t["temperature"])))


def blocks_hash(blocks: LMBlocks) -> str:
    return hashlib.sha256(np.asarray(blocks.input_ids, dtype=np.int64).tobytes()).hexdigest()[:16]


@torch.no_grad()
def topk_table(record: TeacherRecord, blocks: LMBlocks, teacher_net, k: int, temperature: float, batch_size: int,
               accelerator, log) -> dict:
    """The top-k table of ``blocks`` (built once and stored beside the teacher; read from there afterwards)."""
    key = stable_hash({"teacher": record.key, "blocks": blocks_hash(blocks), "k": k, "temperature": temperature})
    path = record.path / f"topk-{key}.pt"
    if not path.exists():
        with file_lock(record.path.with_suffix(".lock")):
            if not path.exists():
                start = time.perf_counter()
                teacher_net.eval().to(accelerator.device)
                parts = []
                for first in range(0, len(blocks), batch_size):
                    batch = collate_blocks(blocks, list(range(first, min(first + batch_size, len(blocks)))))
                    with accelerator.autocast():
                        logits = teacher_net(input_ids=batch["input_ids"].to(accelerator.device)).logits
                    parts.append(topk_teacher(logits, k, temperature))
                table = {"indices": torch.cat([p.indices for p in parts]).to(torch.int32).cpu(),
                         "log_probs": torch.cat([p.log_probs for p in parts]).cpu(),
                         "log_rest": torch.cat([p.log_rest for p in parts]).cpu(), "temperature": float(temperature)}
                fd, tmp = tempfile.mkstemp(dir=record.path, prefix=".tmp-", suffix=".pt")
                os.close(fd)
                torch.save(table, tmp)
                with open(path.with_suffix(".json"), "w") as f:  # its build time: a shared part of the runs reading it
                    json.dump({"seconds": time.perf_counter() - start, "k": k, "blocks": len(blocks)}, f)
                os.replace(tmp, path)
                log(f"teacher top-{k} cache: {len(blocks)} blocks -> {path}")
    return torch.load(path, weights_only=True)


def logits_only(objective) -> bool:
    """Whether ``objective`` reads only the teacher's logits (kd, kd-reverse, gkd-jsd): the top-k cache serves it."""
    return (objective.uses_teacher and not objective.multi_teacher and objective.teacher_cache
            and objective.needs == Needs(logits=True, token_aligned=objective.needs.token_aligned))

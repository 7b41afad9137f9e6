"""The models task-agnostic distillation loads (`distilbench pretrain`): a pretrained encoder without a task head, or
with its masked-LM head when the checkpoint has one (the prediction layer vanilla KD distils there)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .loading import model_config, quiet_transformers, resolve_model
from .pooling import restore_pooling

MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining")  # class-name endings of checkpoints with an MLM head
STUDENT_META = "distilbench.json"  # written by `distilbench pretrain` beside a general student's weights


def has_mlm_head(name: str) -> bool:
    """Whether the checkpoint declares a masked-LM head (an ``architectures`` entry ending in one of
    :data:`MLM_ARCHITECTURES`); the embedded sentence encoders declare none."""
    return any(a.endswith(MLM_ARCHITECTURES) for a in model_config(name).architectures or [])


def load_encoder(name: str, mlm: bool = False):
    """``AutoModel`` for an alias, local path or hub id: the encoder without any head (a checkpoint with one loads
    without it); ``mlm``: ``AutoModelForMaskedLM``, the encoder with its MLM head. Every weight the model has must
    come from the checkpoint (a pooler excepted: MLM checkpoints often have none): a missing one is refused, since a
    silently random teacher would make every number meaningless."""
    from transformers import AutoModel, AutoModelForMaskedLM

    with quiet_transformers():
        model, info = (AutoModelForMaskedLM if mlm else AutoModel).from_pretrained(
            path := resolve_model(name), attn_implementation=None, output_loading_info=True)
    if lost := [k for k in info["missing_keys"] if "pooler" not in k]:
        raise UsageError(f"{name}: weights missing from checkpoint {path}: {', '.join(lost[:5])}")
    return restore_pooling(model)


def general_student(path: str | Path) -> dict[str, Any] | None:
    """How a general student was made (`distilbench pretrain`), from its folder's :data:`STUDENT_META`: the fields a
    row fine-tuned from it keeps, so that a report can say what its init is without the folder. None for any other
    model (an alias, a hub id, a folder without the file or with one that does not parse, a task run's saved
    student, whose card has the same file name)."""
    try:
        data = json.loads((Path(path) / STUDENT_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    identity, corpus = data.get("identity") or {}, data.get("corpus") or {}
    if identity.get("family") != "general-distillation":
        return None
    return {"key": data.get("key"), "objective": identity.get("objective"), "init": identity.get("init"),
            "teacher": identity.get("teacher"), "corpus": corpus.get("name"), "tokens": data.get("tokens_seen"),
            "steps": data.get("steps"), "batch_size": identity.get("batch_size"), "max_length": identity.get("max_length"),
            "lr": identity.get("lr"), "precision": identity.get("precision"), "held_out_loss": data.get("held_out_loss"),
            "git_rev": data.get("git_rev")}


__all__ = ["MLM_ARCHITECTURES", "STUDENT_META", "general_student", "has_mlm_head", "load_encoder"]

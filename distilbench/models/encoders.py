"""The models task-agnostic distillation loads (`distilbench pretrain`): a pretrained encoder without a task head, or
with its masked-LM head when the checkpoint has one (the prediction layer vanilla KD distils there)."""
from __future__ import annotations

from ..errors import UsageError
from .loading import model_config, quiet_transformers, resolve_model
from .pooling import restore_pooling

MLM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining")  # class-name endings of checkpoints with an MLM head


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


__all__ = ["MLM_ARCHITECTURES", "has_mlm_head", "load_encoder"]

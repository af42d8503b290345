"""What a head, planner or halting unit reads from a layer's token states: the [CLS] state or their mean.

BERT's classifier reads the [CLS] state, and so do the papers' off-ramps, planners and halting
units. A sentence encoder trained with mean pooling (sentence-transformers) never needed its
[CLS] state to carry the sentence, so its early layers leave it nearly the same for every input;
decisions read from it then cannot tell inputs apart. ``mean`` reads the attention-masked mean
of the token states instead, and ``auto`` takes whichever pooling the backbone declares in its
sentence-transformers folder (``1_Pooling/config.json``), [CLS] when it declares none.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CLS, MEAN, AUTO = "cls", "mean", "auto"
POOLINGS = (CLS, MEAN)
POOLING_FILE = "1_Pooling/config.json"


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """[B, T, H] token states -> [B, H].

    The [CLS] row, or the mean over the row's real tokens (padding never enters it).
    ``attention_mask`` None says no row is padded (as at batch size 1): the mean is then one call
    instead of five, which counts when the engine pools after every layer of a single input.
    """
    if pooling == CLS:
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(1)
    weights = attention_mask[:, : hidden.shape[1]].to(hidden.dtype)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1)
    # one matrix product of each row's token weights and its states: no [B, T, H] product to materialise, and in an
    # exported graph a MatMul, which ONNX Runtime runs faster than a sum over the token axis
    return (weights.unsqueeze(1) @ hidden).squeeze(1)


def declared_pooling(backbone_folder: str | Path) -> str | None:
    """The pooling a sentence-transformers folder declares (``mean`` or ``cls``), or None when it declares neither."""
    path = Path(backbone_folder) / POOLING_FILE
    if not path.is_file():
        return None
    settings = json.loads(path.read_text())
    if settings.get("pooling_mode_mean_tokens"):
        return MEAN
    if settings.get("pooling_mode_cls_token"):
        return CLS
    return None


def resolve_pooling(requested: str, backbone_folder: str | Path) -> str:
    """``auto`` -> the backbone's declared pooling, else ``cls``; ``cls`` and ``mean`` stay as they are."""
    if requested != AUTO:
        return requested
    return declared_pooling(backbone_folder) or CLS

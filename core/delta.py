"""The int8 delta codec: a fine-tuned encoder stored as its difference from the published backbone.

Every changed matrix is kept as int8 differences with one scale per row, every other changed
weight as it is, and the result is cut into shards of at most ``SHARD_BYTES`` so a fully
fine-tuned model ships where files must stay under 10 MB. This module turns weights into those
tensors and back; the checkpoint folder (file names, reading, writing) is core/checkpoint.py's.
"""

from __future__ import annotations

import torch
from transformers import BertModel

from core.backbone import load_bert
from core.lora import plain_state_dict

SHARD_BYTES = 8 * 2**20


def quantised_delta(bert: BertModel, backbone: str) -> dict[str, torch.Tensor]:
    """The weights that differ from the published backbone.

    Matrices as int8 differences with a scale per row, the rest as they are.
    """
    reference = load_bert(backbone).state_dict()
    tensors = {}
    for name, value in plain_state_dict(bert).items():
        difference = (
            value.detach().float().cpu() - reference[name].float()
        )  # the model may be on a GPU; the reference is on the CPU
        if not difference.any():
            continue
        if value.dim() == 2:
            scale = difference.abs().amax(1).clamp_min(1e-12) / 127
            tensors[f"delta.{name}.int8"] = (difference / scale.unsqueeze(1)).round().clamp(-127, 127).to(torch.int8)
            tensors[f"delta.{name}.scale"] = scale
        else:
            tensors[f"encoder.{name}"] = value.detach().float().cpu()
    return tensors


def shards(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``tensors`` cut, in order, into groups of at most ``SHARD_BYTES`` (a single larger tensor gets a group of its
    own).
    """
    groups, size = [{}], 0
    for name, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append({})
            size = 0
        groups[-1][name] = value
        size += nbytes
    return groups


def apply_delta(bert: BertModel, tensors: dict[str, torch.Tensor]) -> None:
    """Add the int8 differences in ``tensors`` (all shards together) to the backbone ``bert`` and set its other changed
    weights.

    Raises KeyError for a tensor that is neither a difference, its scale, nor a weight of ``bert``.
    """
    parameters = bert.state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("delta.") and key.endswith(".int8"):
                name = key[len("delta.") : -len(".int8")]
                parameters[name].add_(value.float() * tensors[f"delta.{name}.scale"].unsqueeze(1))
            elif key.startswith("encoder."):
                parameters[key[len("encoder.") :]].copy_(value)
            elif not key.endswith(".scale"):
                raise KeyError(key)

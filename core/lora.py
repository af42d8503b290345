"""LoRA adapters on the encoder: put them on, fold them in, and store or restore just them.

Training a method's encoder with LoRA keeps its checkpoint to a few MB of adapters on top of the
task's full model; folding them into the base weights afterwards makes inference pay nothing for
them. All use of ``peft`` is here, so the rest of the toolkit sees plain BERT weights.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers import BertModel

from core.backbone import Encoder

# the linear layers inside the transformer layers (not the pooler, which the heads replace)
LORA_TARGETS = (
    r".*encoder\.layer\.\d+\."
    r"(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)


def add_lora(encoder: Encoder, rank: int = 16, alpha: int = 32, dropout: float = 0.05) -> dict:
    """Put LoRA adapters on the encoder's layers (their base weights frozen); return the settings to save."""
    settings = {"rank": rank, "alpha": alpha, "dropout": dropout}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    inject_adapter_in_model(config, encoder.bert)
    return settings


def merge_lora(encoder: Encoder) -> None:
    """Fold adapters into the base weights so inference pays nothing for them."""
    for module in encoder.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge()


def adapter_state_dict(bert: BertModel) -> dict[str, torch.Tensor]:
    """The adapters' weights alone, to store instead of the encoder they sit on."""
    return get_peft_model_state_dict(bert)


def load_adapters(encoder: Encoder, settings: dict, weights: dict[str, torch.Tensor]) -> None:
    """Put adapters with ``settings`` (as ``add_lora`` returned them) on the encoder and give them ``weights``."""
    add_lora(encoder, **settings)
    result = set_peft_model_state_dict(encoder.bert, weights)
    missing = [name for name in result.missing_keys if "lora_" in name]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"adapter weights do not match: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )


def plain_state_dict(bert: BertModel) -> dict[str, torch.Tensor]:
    """The encoder's weights under plain BERT names (merged LoRA wrappers unwrapped, adapters dropped)."""
    for module in bert.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            raise ValueError("merge the LoRA adapters before taking plain weights")
    return {name.replace(".base_layer", ""): value for name, value in bert.state_dict().items() if "lora_" not in name}

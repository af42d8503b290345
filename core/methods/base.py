"""The interface every method implements: a decision before and after each layer, and an answer.

The engine (core/engine.py) owns the layer loop and the bookkeeping of which rows are still
running; a method only says, for the rows it is shown, which of them run the next layer
(``plan``), which of them stop after it (``after_layer``), and what they answer (``answer``).
Training uses the same modules: ``training_loss`` is the method's objective, computed with the
same heads, gates and accumulations as inference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from core.backbone import Encoder
from core.heads import PooledHead

State = dict[str, torch.Tensor]  # per-row running values; every tensor has the batch as dim 0
Report = dict[str, torch.Tensor]  # per-row values recorded in the trace for one layer


@dataclass(frozen=True)
class RunSettings:
    """How to run a method: its threshold (None: the checkpoint's default) and whether it may save layers."""

    threshold: float | None = None
    early_exit: bool = True


@dataclass
class TrainBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor


class Method(nn.Module):
    name: ClassVar[str]
    supports_regression: ClassVar[bool] = True
    default_threshold: ClassVar[float | None] = None

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float = 0.1):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_outputs = num_outputs
        self.dropout = dropout

    @property
    def threshold_range(self) -> tuple[float, float] | None:
        """The range a threshold may take, or None when the method has no threshold knob."""
        return None

    def new_head(self) -> PooledHead:
        return PooledHead(self.hidden_size, self.num_outputs, self.dropout)

    def hyperparameters(self) -> dict:
        """Extra constructor arguments, saved in the checkpoint's config.json."""
        return {}

    def initialise_heads(self, pooler: dict[str, torch.Tensor] | None) -> None:
        """Start every pooler from the backbone's pretrained pooler, as BERT's own classifier does."""
        if pooler is None:
            return
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, PooledHead):
                    module.dense.weight.copy_(pooler["weight"])
                    module.dense.bias.copy_(pooler["bias"])

    def start_from_full(self, full_head: PooledHead) -> None:
        """Take over a fine-tuned full model's head (stage 1 of every recipe)."""
        raise NotImplementedError

    # --- inference: called by the engine for the rows still running -------------------------
    def begin(self, batch_size: int, device: torch.device) -> State:
        return {}

    def plan(self, layer: int, cls: torch.Tensor, state: State, settings: RunSettings) -> tuple[torch.Tensor | None, Report]:
        """Before ``layer`` (0-based): which rows run it (None: all of them)."""
        return None, {}

    def after_layer(self, layer: int, cls: torch.Tensor, state: State, settings: RunSettings) -> tuple[torch.Tensor | None, Report]:
        """After ``layer``: which rows stop here (None: none of them)."""
        return None, {}

    def answer(self, cls: torch.Tensor, state: State) -> torch.Tensor:
        """Final output for rows that stop: probabilities [b, C], or scores [b] for regression."""
        raise NotImplementedError

    # --- training ---------------------------------------------------------------------------
    def training_loss(self, encoder: Encoder, batch: TrainBatch, **options) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def threshold(self, settings: RunSettings) -> float:
        return self.default_threshold if settings.threshold is None else settings.threshold


def run_all_layers(encoder: Encoder, batch: TrainBatch) -> list[torch.Tensor]:
    """The [CLS] state after every layer, running the whole batch through every layer (for training)."""
    hidden = encoder.embed(batch.input_ids, batch.token_type_ids)
    layer_mask = encoder.attention_mask_for(hidden, batch.attention_mask)
    cls_states = []
    for index in range(encoder.num_layers):
        hidden = encoder.run_layer(index, hidden, layer_mask)
        cls_states.append(hidden[:, 0])
    return cls_states

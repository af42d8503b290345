"""The plain fine-tuned model: every layer, then the head. The baseline and stage 1 of every recipe."""
from __future__ import annotations

import torch

from core.backbone import Encoder
from core.heads import head_output, task_loss
from core.methods.base import Method, State, TrainBatch, run_all_layers


class FullModel(Method):
    name = "full"

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float = 0.1):
        super().__init__(hidden_size, num_layers, num_outputs, dropout)
        self.head = self.new_head()

    def answer(self, cls: torch.Tensor, state: State) -> torch.Tensor:
        return head_output(self.head(cls))

    def training_loss(self, encoder: Encoder, batch: TrainBatch, **options) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.head(run_all_layers(encoder, batch)[-1])
        loss = task_loss(logits, batch.labels)
        return loss, {"loss": loss.item()}

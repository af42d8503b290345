"""The plain fine-tuned model: every layer, then the head. The baseline and stage 1 of every recipe."""

from __future__ import annotations

import torch

from core.backbone import Encoder
from core.heads import PooledHead, head_output, task_loss
from core.methods.base import Method, Stage, State, TrainBatch, run_all_layers


class FullModel(Method):
    name = "full"
    title = "Full model"
    summary = "the fine-tuned model, every layer (the baseline)"
    decides_every_layer = False
    stages = (
        Stage(
            "finetune",
            starts_from="backbone",
            trains_encoder=True,
            help="fine-tune the backbone's layers in full with the task head (embeddings frozen)",
            training={
                "finetune": "full",
                "warmup": 0.1,
                "epochs": 5.0,
                "lr": 5e-5,
                "encoder_lr": 5e-5,
                "batch_size": 16,
            },
        ),
    )

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, config=None):
        super().__init__(hidden_size, num_layers, num_outputs, config)
        self.head = self.new_head()

    def start_from_full(self, full_head: PooledHead) -> None:
        self.head.load_state_dict(full_head.state_dict())

    def answer(self, pooled: torch.Tensor, state: State) -> torch.Tensor:
        return head_output(self.head.logits(pooled))

    def training_loss(
        self, encoder: Encoder, batch: TrainBatch, stage: Stage
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.head(run_all_layers(encoder, batch, self.pooling)[-1])
        loss = task_loss(logits, batch.labels)
        return loss, {"loss": loss.item()}

"""What DeeBERT and PABEE share: an off-ramp (pooler + classifier) after every layer, read off the pooled state.

Off-ramp i answers from the pooled state after layer i. Both methods exit at the first layer
their own rule accepts, so one full-depth run holds every threshold's exits (``first_exit``).
"""

from __future__ import annotations

import torch
from torch import nn

from core.backbone import Encoder
from core.heads import task_loss
from core.methods.base import Method, TrainBatch, run_all_layers
from core.methods.declarations import LayerField, MethodConfig

# every off-ramp method's first per-layer field: the class its off-ramp after that layer predicts
RAMP_PREDICTION = LayerField("prediction", "off-ramp prediction", kind="class")


def first_exit(exits: torch.Tensor) -> torch.Tensor:
    """[rows, layers-1] bool -> the 1-based first layer that says exit, 0 where none does."""
    any_exit = exits.any(1)
    return torch.where(any_exit, exits.int().argmax(1) + 1, torch.zeros_like(any_exit, dtype=torch.long))


class OffRampMethod(Method):
    """A method with an off-ramp after every layer; the last one starts as the full model's head."""

    exits_early = True
    sweeps_in_one_pass = True

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, config: MethodConfig | None = None):
        super().__init__(hidden_size, num_layers, num_outputs, config)
        self.ramps = nn.ModuleList(self.new_head() for _ in range(num_layers))

    def ramp_logits(self, layer: int, pooled: torch.Tensor) -> torch.Tensor:
        return self.ramps[layer].logits(pooled)

    def ramp_losses(self, encoder: Encoder, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Each off-ramp's task loss on the whole batch, every layer run ([layers]), and the same as numbers for the
        log.
        """
        pooled_states = run_all_layers(encoder, batch, self.pooling)
        losses = torch.stack(
            [task_loss(ramp(pooled), batch.labels) for ramp, pooled in zip(self.ramps, pooled_states)]
        )
        return losses, {f"ramp{i + 1}": value for i, value in enumerate(losses.tolist())}

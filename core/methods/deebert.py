"""DeeBERT (Xin et al., ACL 2020): an off-ramp after every layer; exit when its entropy is below S.

Off-ramp i is a pooler + classifier on the [CLS] state after layer i. The last off-ramp is the
fine-tuned model's own classifier, so with S = 0 (entropy is never negative) nothing exits early
and the answer is the full model's.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from core.backbone import Encoder
from core.heads import PooledHead, task_loss
from core.methods.base import Method, Report, RunSettings, State, TrainBatch, run_all_layers


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy in nats, via log-softmax so it never becomes NaN (even for huge logits).

    A class whose probability underflows to 0 has log-probability -inf; clamping it to the
    smallest finite float makes its term 0 * finite = 0 instead of 0 * -inf = NaN.
    """
    log_probs = logits.log_softmax(-1)
    return -(log_probs.exp() * log_probs.clamp_min(torch.finfo(log_probs.dtype).min)).sum(-1)


class DeeBERT(Method):
    name = "deebert"
    supports_regression = False
    default_threshold = 0.0

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float = 0.1):
        if num_outputs < 2:
            from core.errors import UserError

            raise UserError("DeeBERT exits on the entropy of class probabilities, so it needs a classification task, not regression")
        super().__init__(hidden_size, num_layers, num_outputs, dropout)
        self.ramps = nn.ModuleList(self.new_head() for _ in range(num_layers))

    @property
    def threshold_range(self) -> tuple[float, float]:
        return (0.0, math.log(self.num_outputs))

    def start_from_full(self, full_head: PooledHead) -> None:
        self.ramps[-1].load_state_dict(full_head.state_dict())

    @staticmethod
    def exits(entropy: torch.Tensor, threshold: float) -> torch.Tensor:
        """DeeBERT's exit rule; the evaluator's one-pass threshold sweep applies it too."""
        return entropy < threshold

    def begin(self, batch_size: int, device: torch.device) -> State:
        return {"probs": torch.zeros(batch_size, self.num_outputs, device=device)}

    def after_layer(self, layer: int, cls: torch.Tensor, state: State, settings: RunSettings) -> tuple[torch.Tensor | None, Report]:
        logits = self.ramps[layer](cls)
        entropy = entropy_from_logits(logits)
        state["probs"] = logits.softmax(-1)
        stop = self.exits(entropy, self.threshold(settings)) if settings.early_exit else None
        return stop, {"prediction": logits.argmax(-1), "entropy": entropy}

    def answer(self, cls: torch.Tensor, state: State) -> torch.Tensor:
        return state["probs"]

    def training_loss(self, encoder: Encoder, batch: TrainBatch, **options) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage 2: the sum of the off-ramps' cross-entropies (the recipe freezes the rest)."""
        losses = [task_loss(self.ramps[i](cls), batch.labels) for i, cls in enumerate(run_all_layers(encoder, batch))]
        loss = torch.stack(losses[:-1]).sum() if options.get("ramps_only", True) else torch.stack(losses).sum()
        return loss, {"loss": loss.item(), **{f"ramp{i + 1}": value.item() for i, value in enumerate(losses)}}

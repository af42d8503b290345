"""Output heads shared by all methods: BERT's pooler + classifier, and the task loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PooledHead(nn.Module):
    """BERT's sequence head: dense + tanh on the pooled state (BERT's pooler on [CLS]), dropout, then a linear layer.

    DeeBERT's off-ramps, DACT's per-layer classifiers and the final head of every method are all this.
    """

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.tanh(self.dense(pooled))))

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The engine's call: the same as ``forward``, minus the dropout call when it is off, and in fp32 (under bf16
        too) for the decisions.
        """
        squashed = torch.tanh(self.dense(pooled))
        return as_fp32(self.out(self.dropout(squashed) if self.training else squashed))


def as_fp32(values: torch.Tensor) -> torch.Tensor:
    """``values`` in fp32 (no call at all when they already are: at batch size 1 every tensor call counts)."""
    return values if values.dtype == torch.float32 else values.float()


def task_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for classification, mean squared error for regression (one output)."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float(), reduction=reduction)
    return F.cross_entropy(logits, labels.long(), reduction=reduction)


def head_output(logits: torch.Tensor) -> torch.Tensor:
    """What a head answers: class probabilities, or the score itself for regression."""
    if logits.shape[-1] == 1:
        return logits.squeeze(-1)
    return logits.softmax(-1)

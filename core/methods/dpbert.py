"""DPBERT (Wu & Zhuo, ECAI 2023): a planning network before every layer decides to run or bypass it.

Before layer i, s_i = sigmoid(A_i . cls(h^{i-1}) + b_i) with h^0 the embeddings. At inference
layer i runs when s_i > threshold (0.5 by default); otherwise h^i = h^{i-1}. Any subset of layers
may be bypassed. The output head reads the final state, so regression works as well.

Reading of the paper's target rate: s_i is the probability of *executing* layer i, so the mean
planner probability mu is the expected fraction of layers executed. The user gives
``target_skip_rate`` t_skip (fraction of layers bypassed) and the penalty is
lambda2 * (mu - (1 - t_skip))^2.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from core.backbone import Encoder
from core.heads import PooledHead, head_output, task_loss
from core.methods.base import Method, Report, RunSettings, State, TrainBatch


class DPBERT(Method):
    name = "dpbert"
    default_threshold = 0.5

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, dropout: float = 0.1, planner_bias: float = 2.0):
        super().__init__(hidden_size, num_layers, num_outputs, dropout)
        self.planner_bias = planner_bias
        self.planners = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.head = self.new_head()
        with torch.no_grad():  # start by executing every layer, like the stage-1 model
            for planner in self.planners:
                planner.weight.zero_()
                planner.bias.fill_(planner_bias)

    @property
    def threshold_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def hyperparameters(self) -> dict:
        return {"planner_bias": self.planner_bias}

    def start_from_full(self, full_head: PooledHead) -> None:
        self.head.load_state_dict(full_head.state_dict())

    def planner_logit(self, layer: int, cls: torch.Tensor) -> torch.Tensor:
        return self.planners[layer](cls).squeeze(-1)

    def plan(self, layer: int, cls: torch.Tensor, state: State, settings: RunSettings) -> tuple[torch.Tensor | None, Report]:
        probability = torch.sigmoid(self.planner_logit(layer, cls))
        run = probability > self.threshold(settings) if settings.early_exit else None
        return run, {"planner_prob": probability}

    def answer(self, cls: torch.Tensor, state: State) -> torch.Tensor:
        return head_output(self.head(cls))

    def training_loss(
        self,
        encoder: Encoder,
        batch: TrainBatch,
        mode: str = "relaxed",
        target_skip_rate: float = 0.3,
        rate_weight: float = 1.0,
        loss_weight: float = 0.1,
        **options,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``relaxed`` (stage 2): h^i = s_i * layer(h^{i-1}) + (1 - s_i) * h^{i-1}.

        ``rl`` (stage 3): a_i ~ Bernoulli(s_i), the task loss on the sampled path, and REINFORCE
        for the planners with reward R_i = (1/L) sum_{j>=i} (1 - a_j) - beta * loss
        (``loss_weight`` is beta), minus a per-layer batch-mean baseline. In both, the rate
        penalty lambda2 * (mu - (1 - t_skip))^2 (``rate_weight`` is lambda2).
        """
        if mode not in ("relaxed", "rl"):
            raise ValueError(f"mode must be 'relaxed' or 'rl', not {mode!r}")
        hidden = encoder.embed(batch.input_ids, batch.token_type_ids)
        full_mask = encoder.attention_mask_for(hidden, batch.attention_mask)
        logits_per_layer, actions = [], []
        for layer in range(self.num_layers):
            cls = hidden[:, 0]
            if mode == "relaxed":
                logit = self.planner_logit(layer, cls)
                gate = torch.sigmoid(logit).view(-1, 1, 1)
                hidden = gate * encoder.run_layer(layer, hidden, full_mask) + (1 - gate) * hidden
            else:  # the policy gradient trains the planners; the backbone learns from the task loss only
                logit = self.planner_logit(layer, cls.detach())
                action = torch.bernoulli(torch.sigmoid(logit)).detach()
                rows = action.nonzero().squeeze(1)
                if len(rows) == len(action):
                    hidden = encoder.run_layer(layer, hidden, full_mask)
                elif len(rows):
                    hidden = encoder.run_layer_on_rows(layer, hidden, batch.attention_mask, rows)
                actions.append(action)
            logits_per_layer.append(logit)
        planner_logits = torch.stack(logits_per_layer, 1)  # [batch, layers]
        mean_execute = torch.sigmoid(planner_logits).mean()
        rate_penalty = rate_weight * (mean_execute - (1 - target_skip_rate)) ** 2
        per_row_loss = task_loss(self.head(hidden[:, 0]), batch.labels, reduction="none")
        stats = {"execute_rate": mean_execute.item()}
        if mode == "relaxed":
            loss = per_row_loss.mean() + rate_penalty
        else:
            taken = torch.stack(actions, 1)
            skipped = 1 - taken
            skipped_from_here = skipped.flip(1).cumsum(1).flip(1) / self.num_layers
            reward = skipped_from_here - loss_weight * per_row_loss.detach().unsqueeze(1)
            advantage = reward - reward.mean(0, keepdim=True)
            log_prob = -F.binary_cross_entropy_with_logits(planner_logits, taken, reduction="none")
            policy_loss = -(advantage * log_prob).sum(1).mean()
            loss = per_row_loss.mean() + policy_loss + rate_penalty
            stats.update(policy=policy_loss.item(), sampled_execute_rate=taken.mean().item())
        stats.update(loss=loss.item(), task=per_row_loss.mean().item())
        return loss, stats

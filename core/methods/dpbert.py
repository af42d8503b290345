"""DPBERT (Wu & Zhuo, ECAI 2023): a planning network before every layer decides to run or bypass it.

Before layer i, s_i = sigmoid(A_i . pooled(h^{i-1}) + b_i) with h^0 the embeddings; the paper
pools with [CLS] (``pooling = "cls"``). At inference layer i runs when s_i > threshold (0.5 by
default); otherwise h^i = h^{i-1}. Any subset of layers may be bypassed. The output head reads
the final state, so regression works as well.

Reading of the paper's target rate: s_i is the probability of *executing* layer i, so the user
gives ``target_skip_rate`` t (the fraction of layers bypassed) and the penalty is
lambda2 * (rate - (1 - t))^2. ``rate_penalty = "mean"`` is the paper's rate (the mean planner
probability); ``"hard"`` penalises the rate at the inference rule 1(s > 0.5), with a
straight-through gradient, so that the trained model executes 1 - t of its layers at threshold
0.5 instead of needing a threshold tuned afterwards. The squared penalty alone gives way to the
task loss (the rl stage's reward drifts the rate up), so a Lagrange multiplier prices the excess
too and rises by ``rate_multiplier_step`` * (rate - (1 - t)) every step while the rate is above its
target (dual ascent; it falls back toward 0 below it). In the ``rl`` stage that rate is measured on
the inference rule's own path (one more forward pass, without a graph through the layers): the
planners after a skipped layer read other states than on the sampled paths.

The multiplier reaches the planners only through their gradient, and Adam moves a bias by about
the learning rate per step, whatever the gradient's size: over the rl stage that is a few hundredths
of a logit, while the rate needs the average logit to move by a unit or more. The weights cannot do
it either, as the standardised states have mean 0. So ``rate_bias_step`` also acts on the biases
directly: every training step all planner biases fall by that step times (rate - (1 - t))
(rise when the rate is below; the rate averaged over the processes of a multi-process run), an
integral controller that holds the rule's rate at 1 - t whatever the learning rate. Checkpoints
saved before it existed trained without it (``values_before_added``).

``first_layer = "always"`` (the default) always runs layer 1. A bypassed layer leaves the state
as it was, so when layer 1 is bypassed the next planner reads the pooled embeddings again, and so
on: inputs whose first planner says bypass tend to run no layer at all and all get one answer
(the head's answer for the pooled embeddings). ``"planner"`` is the paper's: a planner on the
pooled embeddings decides layer 1 like every other layer. With [CLS] pooling that decision is a
constant of the model, since the [CLS] embedding is the same for every input. ``"mean"`` reads the
mean-pooled embeddings whatever ``pooling`` says, as models trained before ``pooling`` existed do.

The pooled states of different inputs share a large common component, so a zero-initialised
linear planner trained with Adam mostly learns that component's direction, which acts like a
second bias: every input gets the same decision. ``planner_input = "standardized"`` feeds each
planner its input standardised per feature with running statistics of the training batches
(``RunningStandardizer``), so the weights only see what differs between inputs and the bias
alone carries the rate. ``"raw"`` is the paper's.

REINFORCE needs a baseline. ``rl_baseline = "batch"`` subtracts the batch's mean reward per layer,
which mostly compares easy inputs with hard ones. ``"greedy"`` subtracts the reward the same input
gets on its inference-rule path (self-critical training, Rennie et al. 2017): a sampled skip is
rewarded only when it costs that input less than it saves, which is the signal for
input-dependent paths. It costs one extra forward pass without gradients per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from core.backbone import Encoder
from core.heads import PooledHead, as_fp32, head_output, task_loss
from core.methods.base import Decision, Method, Report, RunSettings, State, TrainBatch
from core.methods.declarations import (
    Knob,
    LayerChart,
    LayerField,
    MethodConfig,
    PaperClaim,
    Series,
    Stage,
    choice_option,
    option,
)
from core.methods.presets import heads_stage, joint_stage
from core.pooling import MEAN, pool

# the values of DPBERTConfig's choice settings and what each one means (the module docstring says why)
RATE_PENALTIES = {"hard": "the inference rule s > 0.5 (straight-through)", "mean": "mean planner probability (paper)"}
FIRST_LAYER_DECISIONS = {
    "planner": "a planner on the pooled embeddings, like every layer (paper)",
    "always": "always run",
    "mean": "a planner on the mean-pooled embeddings whatever the pooling (models trained before pooling existed)",
}
PLANNER_INPUTS = {
    "raw": "the pooled state (paper)",
    "standardized": "that state standardised per feature (running batch statistics)",
}
RL_BASELINES = {
    "batch": "the batch's mean reward per layer",
    "greedy": "the same input's reward on its inference-rule path (self-critical)",
}


@dataclass
class DPBERTConfig(MethodConfig):
    # planner 1 on the [CLS] embedding was the paper's rule under its earlier name
    renamed_values: ClassVar[dict[str, dict[str, str]]] = {"first_layer": {"cls": "planner"}}
    values_before_added: ClassVar[dict[str, object]] = MethodConfig.values_before_added | {"rate_bias_step": 0.0}

    target_skip_rate: float = option(0.4, "t: the fraction of layers to bypass", low=0.0, high=1.0)
    rate_weight: float = option(
        10.0, "lambda2: weight of the rate penalty (the paper's 1 leaves the rate far above 1 - t)", low=0.0
    )
    policy_weight: float = option(1.0, "lambda1: weight of the policy-gradient loss (rl stage)", low=0.0)
    reward_loss_weight: float = option(
        5.0, "beta: weight of the task loss in the reward (the paper searches 5, 20, 35, 50)", low=0.0
    )
    rate_penalty: str = choice_option("hard", "what the rate penalty measures", RATE_PENALTIES)
    first_layer: str = choice_option("always", "layer 1's decision", FIRST_LAYER_DECISIONS)
    planner_input: str = choice_option("standardized", "what a planner reads", PLANNER_INPUTS)
    rate_multiplier_step: float = option(
        0.1,
        "dual ascent on the rate: a multiplier that grows by this times (rate - (1 - t)) every step and "
        "prices the excess rate (0: off)",
        low=0.0,
    )
    rate_bias_step: float = option(
        0.2,
        "integral rate control: every training step all planner biases fall by this times (rate - (1 - t)) (0: off)",
        low=0.0,
    )
    planner_bias: float = option(
        1.0, "initial planner bias (1: run every layer at first, like the full model, but not saturated)"
    )
    rl_baseline: str = choice_option("greedy", "REINFORCE baseline (rl stage)", RL_BASELINES)


def mean_over_processes(value: Tensor) -> Tensor:
    """``value`` averaged over the training processes (itself in a single process).

    Under ``accelerate launch`` each process sees its own batch, and a parameter changed outside the
    optimiser must change alike everywhere, or the replicas drift apart.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    total = value.clone()
    torch.distributed.all_reduce(total)
    return total / torch.distributed.get_world_size()


class RunningStandardizer(nn.Module):
    """Standardises each feature with running statistics of the training batches, in training as at inference.

    Unlike BatchNorm it never normalises with the batch's own statistics: those differ from the
    running ones (dropout, sampled paths), and a planner trained on one sees other numbers at
    inference.
    """

    def __init__(self, size: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, summary: Tensor) -> Tensor:
        if self.training and summary.shape[0] > 1:
            with torch.no_grad():
                weight = 1.0 if self.batches.item() == 0 else self.momentum  # the first batch sets the statistics
                self.mean.lerp_(summary.mean(0).to(self.mean.dtype), weight)
                self.var.lerp_(summary.var(0).to(self.var.dtype), weight)
                self.batches += 1
        return (summary - self.mean) * torch.rsqrt(self.var + self.eps)


class DPBERT(Method):
    name = "dpbert"
    title = "DPBERT"
    paper = "Wu & Zhuo, ECAI 2023"
    paper_claim = PaperClaim("98% of BERT-base's GLUE score at 1.34x speed-up", metric_pct_of_full=98.0, speedup=1.34)
    summary = "a planner before every layer runs or bypasses it (any subset of layers)"
    Config = DPBERTConfig
    # the target skip rate t sets the trade-off as much as the threshold does: each trained t is a candidate
    variants_are_operating_points = True
    stages = (
        heads_stage(
            "relaxed",
            "backbone frozen; planners and head through the relaxed gate s*layer(h) + (1-s)*h",
            ships=False,
        ),
        joint_stage(
            "rl",
            "backbone and planners jointly: task loss on sampled paths plus REINFORCE for the planners",
            starts_from="previous",
        ),
        joint_stage(
            "soft", "ablation (paper Table 2): relaxed gates trained jointly with the backbone, no RL", ships=False
        ),
    )
    layer_fields = (
        LayerField(
            "planner_prob",
            "planner probability of running the layer",
            help="the layer runs when it is above the threshold",
        ),
    )
    layer_chart = LayerChart(
        title="DPBERT: planner probability per layer",
        y_title="planner probability",
        series=(Series("planner_prob", "planner probability"),),
        mark="bar",
        y_domain=(0.0, 1.0),
        knob_rule="threshold",
        caption="A layer runs when its planner probability is above the threshold; otherwise it is bypassed.",
    )

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, config: DPBERTConfig | None = None):
        super().__init__(hidden_size, num_layers, num_outputs, config)
        self.planners = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        if self.config.planner_input == "standardized":
            self.planner_norms = nn.ModuleList(RunningStandardizer(hidden_size) for _ in range(num_layers))
        self.head = self.new_head()
        # the dual variable of the rate constraint: training state (resumed with the run), not part of the model
        self.register_buffer("rate_multiplier", torch.zeros(()), persistent=False)
        with torch.no_grad():  # start by executing every layer, like the stage-1 model
            for planner in self.planners:
                planner.weight.zero_()
                planner.bias.fill_(self.config.planner_bias)

    @property
    def knob(self) -> Knob:
        return Knob(
            name="planner threshold",
            symbol="threshold",
            low=0.0,
            high=1.0,
            sweep=(0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7),
            help="run a layer when its planner probability is above the threshold; larger bypasses more",
        )

    @property
    def default_threshold(self) -> float:
        return 0.5

    def start_from_full(self, full_head: PooledHead) -> None:
        self.head.load_state_dict(full_head.state_dict())

    def planner_state(self, layer: int, hidden: Tensor, mask: Tensor, pooled: Tensor | None = None) -> Tensor:
        """What the planner of ``layer`` reads: the pooled state entering it (``pooled``, if the caller has it)."""
        if layer == 0 and self.config.first_layer == MEAN:
            return pool(hidden, mask, MEAN)
        return pool(hidden, mask, self.pooling) if pooled is None else pooled

    def planner_logit(self, layer: int, state: Tensor) -> Tensor | None:
        """The planner's logit for running ``layer`` (None where the layer always runs)."""
        if layer == 0 and self.config.first_layer == "always":
            return None
        if self.config.planner_input == "standardized":
            state = self.planner_norms[layer](state)
        return as_fp32(self.planners[layer](state).squeeze(-1))

    @staticmethod
    def runs(logit: Tensor, threshold: float | Tensor) -> Tensor:
        """The rule sigmoid(logit) > threshold, compared on the logit (one call fewer per layer).

        Logit > ln(t / (1 - t)). A tensor threshold (the knob as an input of an exported graph) is
        compared with tensor ops alone, so tracing needs no branch on its value.
        """
        if isinstance(threshold, Tensor):
            return logit > torch.logit(threshold.to(logit.dtype).clamp(0.0, 1.0))  # logit(0) = -inf, logit(1) = inf
        if threshold <= 0.0:
            return logit > -math.inf
        if threshold >= 1.0:
            return logit > math.inf
        return logit > math.log(threshold / (1 - threshold))

    def plan(
        self, layer: int, pooled: Tensor, hidden: Tensor, mask: Tensor, state: State, settings: RunSettings
    ) -> Decision:
        logit = self.planner_logit(layer, self.planner_state(layer, hidden, mask, pooled))
        if logit is None:  # layer 1 always runs: as a planner certain to run it
            return None, {"planner_logit": torch.full((hidden.shape[0],), math.inf, device=hidden.device)}
        return self.runs(logit, self.threshold(settings)) if settings.early_exit else None, {"planner_logit": logit}

    def layer_values(self, layer: int, report: Report) -> Report:
        return {"planner_prob": torch.sigmoid(report["planner_logit"])}

    def answer(self, pooled: Tensor, state: State) -> Tensor:
        return head_output(self.head.logits(pooled))

    def training_loss(self, encoder: Encoder, batch: TrainBatch, stage: Stage) -> tuple[Tensor, dict[str, float]]:
        """``relaxed``: h^i = s_i * layer(h^{i-1}) + (1 - s_i) * h^{i-1}.

        ``soft`` (the paper's ablation) is the relaxed gate with the backbone training too.

        ``rl``: a_i ~ Bernoulli(s_i), the task loss on the sampled path, and REINFORCE for the
        planners with reward R_i = (1/L) sum_{j>=i} (1 - a_j) - beta * loss, minus the baseline
        (``rl_baseline``), weighted by lambda1. In both, the rate penalty lambda2 * (rate - (1 - t))^2.
        """
        config = self.config
        embedded = encoder.embed(batch.input_ids, batch.token_type_ids)
        full_mask = encoder.attention_mask_for(embedded, batch.attention_mask)
        rule_hidden = None
        if stage.name == "rl":
            hidden, probabilities, actions, log_probs = self.planned_pass(
                encoder, embedded, batch.attention_mask, full_mask, sample=True
            )
            if config.rate_penalty == "hard" or config.rl_baseline == "greedy":  # the inference rule's own path
                rule_hidden, rule_probabilities, rule_actions, _ = self.planned_pass(
                    encoder, embedded, batch.attention_mask, full_mask, sample=False, encoder_grad=False
                )
                if config.rate_penalty == "hard":
                    probabilities = rule_probabilities
        else:
            (hidden, probabilities), actions, log_probs = (
                self.relaxed_pass(encoder, embedded, batch.attention_mask, full_mask),
                [],
                [],
            )
        executed = torch.stack(probabilities, 1)  # [batch, layers]
        if config.rate_penalty == "hard":  # the inference rule's rate, with the probabilities' gradient
            executed = (executed > 0.5).to(executed.dtype) + executed - executed.detach()
        rate = executed.mean()
        excess = rate - (1 - config.target_skip_rate)
        rate_penalty = (
            config.rate_weight * excess**2 + self.rate_multiplier.clone() * excess
        )  # this step's price; updated below
        if self.training:
            with torch.no_grad():  # dual ascent: the price of executing too much rises until the rate holds
                self.rate_multiplier.add_(config.rate_multiplier_step * excess.detach()).clamp_(min=0.0)
                self.shift_planner_biases(-config.rate_bias_step * mean_over_processes(excess.detach()).item())
        per_row_loss = task_loss(
            self.head(pool(hidden, batch.attention_mask, self.pooling)), batch.labels, reduction="none"
        )
        stats = {"execute_rate": rate.item(), "rate_multiplier": self.rate_multiplier.item()}
        loss = per_row_loss.mean() + rate_penalty
        if actions:
            taken = torch.stack(actions, 1)
            reward = self.reward(taken, per_row_loss.detach())
            if config.rl_baseline == "greedy":
                with torch.no_grad():
                    rule_loss = task_loss(
                        self.head(pool(rule_hidden, batch.attention_mask, self.pooling)),
                        batch.labels,
                        reduction="none",
                    )
                    advantage = reward - self.reward(torch.stack(rule_actions, 1), rule_loss)
            else:
                advantage = reward - reward.mean(0, keepdim=True)
            policy_loss = -(advantage * torch.stack(log_probs, 1)).sum(1).mean()
            loss = loss + config.policy_weight * policy_loss
            stats.update(policy=policy_loss.item(), sampled_execute_rate=taken.mean().item())
        stats.update(loss=loss.item(), task=per_row_loss.mean().item())
        return loss, stats

    def shift_planner_biases(self, shift: float) -> None:
        """Move every planner's bias by ``shift`` (the integral rate control; 0 leaves them as they are).

        Layer 1's planner is left alone where layer 1 always runs: it decides nothing.
        """
        if not shift:
            return
        for layer, planner in enumerate(self.planners):
            if not (layer == 0 and self.config.first_layer == "always"):
                planner.bias.add_(shift)

    def reward(self, taken: Tensor, per_row_loss: Tensor) -> Tensor:
        """R_i = (1/L) sum_{j>=i} (1 - a_j) - beta * loss, per row and planned layer."""
        skipped_from_here = (1 - taken).flip(1).cumsum(1).flip(1) / self.num_layers
        return skipped_from_here - self.config.reward_loss_weight * per_row_loss.unsqueeze(1)

    def relaxed_pass(
        self, encoder: Encoder, hidden: Tensor, mask: Tensor, full_mask: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """h^i = s_i * layer(h^{i-1}) + (1 - s_i) * h^{i-1}; the planners' probabilities per layer."""
        probabilities = []
        for layer in range(self.num_layers):
            logit = self.planner_logit(layer, self.planner_state(layer, hidden, mask))
            if logit is None:  # layer 1 always runs
                hidden = encoder.run_layer(layer, hidden, full_mask)
                probabilities.append(hidden.new_ones(hidden.shape[0]))
                continue
            probability = torch.sigmoid(logit)
            probabilities.append(probability)
            gate = probability.view(-1, 1, 1)
            hidden = gate * encoder.run_layer(layer, hidden, full_mask) + (1 - gate) * hidden
        return hidden, probabilities

    def planned_pass(
        self,
        encoder: Encoder,
        hidden: Tensor,
        mask: Tensor,
        full_mask: Tensor,
        sample: bool,
        encoder_grad: bool = True,
    ) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
        """Layers run on the rows whose action is 1: a ~ Bernoulli(s) (``sample``) or the inference rule s > 0.5.

        The planners read detached states (the policy gradient reaches only them); ``encoder_grad``
        False runs the layers without a graph (a path only the planners learn from). Returns the
        final state, the probabilities, and the actions and their log-probabilities of the planned layers.
        """
        probabilities, actions, log_probs = [], [], []
        layer_grad = encoder_grad and torch.is_grad_enabled()
        for layer in range(self.num_layers):
            logit = self.planner_logit(layer, self.planner_state(layer, hidden.detach(), mask))
            if logit is None:  # layer 1 always runs
                with torch.set_grad_enabled(layer_grad):
                    hidden = encoder.run_layer(layer, hidden, full_mask)
                probabilities.append(hidden.new_ones(hidden.shape[0]))
                continue
            probability = torch.sigmoid(logit)
            probabilities.append(probability)
            action = torch.bernoulli(probability.detach()) if sample else (logit.detach() > 0).to(probability.dtype)
            rows = action.nonzero().squeeze(1)
            with torch.set_grad_enabled(layer_grad):
                if len(rows) == len(action):
                    hidden = encoder.run_layer(layer, hidden, full_mask)
                elif len(rows):
                    hidden = encoder.run_layer_on_rows(layer, hidden, mask, rows)
            actions.append(action)
            log_probs.append(-F.binary_cross_entropy_with_logits(logit, action, reduction="none"))
        return hidden, probabilities, actions, log_probs

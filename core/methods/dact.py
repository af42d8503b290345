"""DACT-BERT (Eyzaguirre et al., 2021): differentiable adaptive computation time on BERT.

After layer n a classifier gives class probabilities y_n and a halting unit gives
h_n = sigmoid(w_n . pooled + b_n), both from the layer's pooled state (the paper's [CLS] state
with ``pooling = "cls"``). With p_0 = 1 and a_0 = 0 the answer accumulates as
a_n = y_n * p_{n-1} + a_{n-1} * (1 - p_{n-1}) and p_n = p_{n-1} * h_n. Since p can only shrink,
in the d = L - n layers still to come the top class c* keeps at least a_n[c*] * (1 - p_n)^d and
any other class gains at most p_n * d, so once
    a_n[c*] * (1 - p_n)^d >= a_n[runner-up] + p_n * d
the final answer's class is decided and the model halts with a_n. There is no inference
threshold: the trade-off is the training weight tau of the halting penalty, so each trained
tau is an operating point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.backbone import Encoder
from core.heads import PooledHead, as_fp32
from core.methods.base import Decision, Method, Report, RunSettings, State, TrainBatch, run_all_layers
from core.methods.declarations import LayerChart, LayerField, MethodConfig, PaperClaim, Series, Stage, option
from core.methods.presets import joint_stage


@dataclass
class DACTConfig(MethodConfig):
    tau: float = option(
        0.01, "weight of the sum of halting values in the loss (the speed/accuracy trade-off)", low=0.0
    )
    halting_bias: float = option(1.0, "initial bias of the halting units (larger: halt later at first)")


def accumulate(
    answer: torch.Tensor, remaining: torch.Tensor, probs: torch.Tensor, halting: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DACT step: (a_{n-1}, p_{n-1}, y_n, h_n) -> (a_n, p_n), with a_n = a_{n-1} + p_{n-1} (y_n - a_{n-1}) as one
    lerp.
    """
    return answer.lerp(probs, remaining.unsqueeze(-1)), remaining * halting


def halting_bounds(
    top_two: torch.Tensor, remaining: torch.Tensor, layers_left: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bound of the top class and upper bound of the runner-up after ``layers_left`` more layers."""
    lower = top_two[:, 0] * (1 - remaining) ** layers_left
    upper = top_two[:, 1] + remaining * layers_left
    return lower, upper


class DACT(Method):
    Config = DACTConfig
    name = "dact"
    title = "DACT-BERT"
    paper = "Eyzaguirre et al., 2021"
    paper_claim = PaperClaim("better than DeeBERT and PABEE at low computation (BERT-base, GLUE)")
    summary = "halting units and an accumulated answer; halt once a bound proves the class cannot change"
    stages = (joint_stage("joint", "train encoder, classifiers and halting units on -log a_L[y] + tau * sum h"),)
    supports_regression = False
    exits_early = True
    variants_are_operating_points = True
    layer_fields = (
        LayerField("prediction", "this layer's classifier", kind="class"),
        LayerField("halting_prob", "halting probability h_n"),
        LayerField("accumulated", "accumulated answer a_n", kind="distribution"),
        LayerField("top_class", "class with the largest a_n", kind="class"),
        LayerField("top_accumulated", "top class: accumulated"),
        LayerField("runner_up_accumulated", "runner-up: accumulated"),
        LayerField(
            "top_lower_bound", "top class: lower bound", help="the least the top class can still have at the end"
        ),
        LayerField("runner_up_upper_bound", "runner-up: upper bound", help="the most the runner-up can still reach"),
    )
    layer_chart = LayerChart(
        title="DACT-BERT: halting bounds",
        y_title="probability",
        series=(
            Series("top_accumulated", "top class: accumulated", "#2563eb"),
            Series("top_lower_bound", "top class: lower bound", "#93c5fd", dashed=True),
            Series("runner_up_accumulated", "runner-up: accumulated", "#ea580c"),
            Series("runner_up_upper_bound", "runner-up: upper bound", "#fdba74", dashed=True),
        ),
        y_domain=(0.0, 1.0),
        caption="The model halts at the first layer where the top class's lower bound reaches the runner-up's upper "
        "bound.",
    )

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, config: DACTConfig | None = None):
        super().__init__(hidden_size, num_layers, num_outputs, config)
        self.classifiers = nn.ModuleList(self.new_head() for _ in range(num_layers))
        self.halting = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        with torch.no_grad():
            for unit in self.halting:
                unit.bias.fill_(self.config.halting_bias)

    def start_from_full(self, full_head: PooledHead) -> None:
        for classifier in self.classifiers:
            classifier.load_state_dict(full_head.state_dict())

    def halting_probability(self, layer: int, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(as_fp32(self.halting[layer](pooled))).squeeze(-1)

    def begin(self, batch_size: int, device: torch.device) -> State:
        return {
            "answer": torch.zeros(batch_size, self.num_outputs, device=device),
            "remaining": torch.ones(batch_size, device=device),
        }

    def after_layer(self, layer: int, pooled: torch.Tensor, state: State, settings: RunSettings) -> Decision:
        probs = self.classifiers[layer].logits(pooled).softmax(-1)
        halting = self.halting_probability(layer, pooled)
        answer, remaining = accumulate(state["answer"], state["remaining"], probs, halting)
        state["answer"], state["remaining"] = answer, remaining
        layers_left = self.num_layers - layer - 1
        stop = None
        if settings.early_exit and layers_left > 0:
            lower, upper = halting_bounds(answer.topk(2, dim=-1).values, remaining, layers_left)
            stop = lower >= upper
        return stop, {"probs": probs, "halting_prob": halting, "accumulated": answer, "remaining": remaining}

    def layer_values(self, layer: int, report: Report) -> Report:
        """The per-layer classifier's class, and the accumulated answer's top two with the bounds the halting rule
        compared.
        """
        top_two = report["accumulated"].topk(2, dim=-1)
        lower, upper = halting_bounds(top_two.values, report["remaining"], self.num_layers - layer - 1)
        return {
            "prediction": report["probs"].argmax(-1),
            "halting_prob": report["halting_prob"],
            "accumulated": report["accumulated"],
            "top_class": top_two.indices[:, 0],
            "top_accumulated": top_two.values[:, 0],
            "runner_up_accumulated": top_two.values[:, 1],
            "top_lower_bound": lower,
            "runner_up_upper_bound": upper,
        }

    def answer(self, pooled: torch.Tensor, state: State) -> torch.Tensor:
        return state["answer"]

    def training_loss(
        self, encoder: Encoder, batch: TrainBatch, stage: Stage
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative log-likelihood of the accumulated answer a_L plus tau * the sum of the halting values."""
        pooled_states = run_all_layers(encoder, batch, self.pooling)
        answer = torch.zeros(len(batch.labels), self.num_outputs, device=batch.labels.device)
        remaining = torch.ones(len(batch.labels), device=batch.labels.device)
        halting_sum = torch.zeros_like(remaining)
        for layer, pooled in enumerate(pooled_states):
            halting = self.halting_probability(layer, pooled)
            answer, remaining = accumulate(answer, remaining, self.classifiers[layer](pooled).softmax(-1), halting)
            halting_sum = halting_sum + halting
        nll = -answer.gather(1, batch.labels.long().unsqueeze(1)).squeeze(1).clamp_min(1e-12).log().mean()
        ponder = halting_sum.mean()
        loss = nll + self.config.tau * ponder
        return loss, {"loss": loss.item(), "nll": nll.item(), "sum_h": ponder.item()}

"""PABEE (Zhou et al., NeurIPS 2020, "BERT Loses Patience"): exit when enough consecutive off-ramps agree.

An off-ramp (pooler + classifier on the pooled state, as DeeBERT's) follows every layer. A counter of consecutive
agreements grows by one when a layer's off-ramp predicts the same class as the previous layer's
(for regression: a score within ``regression_tolerance`` of the previous one) and drops to 0
otherwise; the input exits, with the current off-ramp's answer, as soon as the counter reaches
the patience t. Layer 1 has nothing to agree with, so the earliest exit is after layer t + 1,
and with t = L - 1 every layer runs. Training is the paper's: encoder and all off-ramps jointly
on the weighted average of the off-ramp losses, sum_j j * L_j / sum_j j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.backbone import Encoder
from core.heads import PooledHead, head_output
from core.methods.base import Decision, RunSettings, State, TrainBatch
from core.methods.declarations import Knob, LayerChart, LayerField, MethodConfig, PaperClaim, Series, Stage, option
from core.methods.offramps import RAMP_PREDICTION, OffRampMethod, first_exit
from core.methods.presets import joint_stage


@dataclass
class PABEEConfig(MethodConfig):
    regression_tolerance: float = option(
        0.1, "regression: consecutive off-ramp scores agree when they differ by less than this", low=0.0
    )


class PABEE(OffRampMethod):
    name = "pabee"
    title = "PABEE"
    paper = "Zhou et al., NeurIPS 2020"
    paper_claim = PaperClaim(
        '"BERT Loses Patience": fewer layers per input with accuracy and robustness improved rather than lost, '
        "a better accuracy-speed trade-off than earlier early-exit methods (ALBERT, GLUE)"
    )
    summary = "an off-ramp after every layer; exit when t consecutive off-ramps agree"
    Config = PABEEConfig
    stages = (joint_stage("joint", "train encoder and off-ramps jointly on sum_j j * L_j / sum_j j"),)
    layer_fields = (
        RAMP_PREDICTION,
        LayerField(
            "agreeing", "consecutive agreeing off-ramps", help="the input exits when this reaches the patience t"
        ),
    )
    layer_chart = LayerChart(
        title="PABEE: consecutive agreeing off-ramps vs patience",
        y_title="agreeing off-ramps in a row",
        series=(Series("agreeing", "agreeing in a row"),),
        mark="bar",
        knob_rule="patience t",
        caption="The counter grows while each off-ramp agrees with the one before; the input exits when it reaches "
        "the patience t.",
    )

    @property
    def knob(self) -> Knob:
        last = max(1, self.num_layers - 1)
        return Knob(
            name="patience t",
            symbol="t",
            low=1,
            high=last,
            sweep=tuple(float(t) for t in range(1, last + 1)),
            integer=True,
            step=1,
            help="exit when t consecutive off-ramps agree; smaller exits earlier (L - 1: never)",
        )

    @property
    def default_threshold(self) -> float:
        return float(max(1, self.num_layers - 1))

    def start_from_full(self, full_head: PooledHead) -> None:
        for ramp in self.ramps:
            ramp.load_state_dict(full_head.state_dict())

    def begin(self, batch_size: int, device: torch.device) -> State:
        if self.num_outputs > 1:  # the previous off-ramp's class (-1: none yet)
            previous = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        else:  # the previous off-ramp's score (NaN: none yet, agrees with nothing)
            previous = torch.full((batch_size,), float("nan"), device=device)
        return {"previous": previous, "agreeing": torch.zeros(batch_size, device=device)}

    def after_layer(self, layer: int, pooled: torch.Tensor, state: State, settings: RunSettings) -> Decision:
        logits = self.ramp_logits(layer, pooled)
        if self.num_outputs > 1:
            current = logits.argmax(-1)
            agree = current == state["previous"]
        else:
            current = logits.squeeze(-1)
            agree = (current - state["previous"]).abs() < self.config.regression_tolerance
        agreeing = (state["agreeing"] + 1) * agree  # one more in a row, or back to 0
        state["previous"], state["agreeing"], state["logits"] = current, agreeing, logits
        stop = agreeing >= self.threshold(settings) if settings.early_exit else None
        return stop, {"prediction": current, "agreeing": agreeing}

    def answer(self, pooled: torch.Tensor, state: State) -> torch.Tensor:
        return head_output(state["logits"])

    def sweep_exits(self, values: dict[str, torch.Tensor], threshold: float) -> torch.Tensor:
        return first_exit(values["agreeing"][:, :-1] >= threshold)

    def training_loss(
        self, encoder: Encoder, batch: TrainBatch, stage: Stage
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The paper's weighted average of the off-ramp losses: deeper off-ramps weigh more (weight j for layer j)."""
        losses, stats = self.ramp_losses(encoder, batch)
        weights = torch.arange(1, len(losses) + 1, dtype=losses.dtype, device=losses.device)
        loss = (weights * losses).sum() / weights.sum()
        return loss, {"loss": loss.item(), **stats}

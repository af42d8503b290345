"""DeeBERT (Xin et al., ACL 2020): an off-ramp after every layer; exit when its entropy is below S.

Off-ramp i is a pooler + classifier on the pooled state after layer i (the paper's [CLS] state with
``pooling = "cls"``). The last off-ramp is the
fine-tuned model's own classifier, so with S = 0 (entropy is never negative) nothing exits early
and the answer is the full model's. Training (the paper's two stages): stage 1 is the full
model; stage 2 freezes it and trains off-ramps 1..L-1 on the sum of their cross-entropies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from core.backbone import Encoder
from core.heads import PooledHead
from core.methods.base import Decision, Report, RunSettings, State, TrainBatch
from core.methods.declarations import Knob, LayerChart, LayerField, PaperClaim, Series, Stage
from core.methods.offramps import RAMP_PREDICTION, OffRampMethod, first_exit
from core.methods.presets import heads_stage


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of probability rows: sum of -p ln p, with 0 ln 0 = 0 (``torch.special.entr``), so never NaN."""
    return torch.special.entr(probs).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy in nats; a class whose probability underflows to 0 adds 0, so even huge logits give no NaN."""
    return entropy(logits.softmax(-1))


# what the exit rule compares with S after every layer, as the trace records and the chart draws it
RAMP_ENTROPY = LayerField(
    "entropy", "off-ramp entropy (nats)", help="the input exits at the first off-ramp whose entropy is below S"
)


class DeeBERT(OffRampMethod):
    name = "deebert"
    title = "DeeBERT"
    paper = "Xin et al., ACL 2020"
    paper_claim = PaperClaim("up to ~40% less inference time with minimal quality loss (BERT-base, GLUE)")
    summary = "an off-ramp after every layer; exit when its entropy is below a threshold S"
    supports_regression = False
    stages = (heads_stage("ramps", "freeze the full model, train off-ramps 1..L-1"),)
    layer_fields = (RAMP_PREDICTION, RAMP_ENTROPY)
    layer_chart = LayerChart(
        title="DeeBERT: entropy per layer vs S",
        y_title=RAMP_ENTROPY.label,
        series=(Series(RAMP_ENTROPY.name, "entropy"),),
        knob_rule="S",
        caption="The input exits at the first off-ramp whose entropy is below S.",
    )

    @property
    def knob(self) -> Knob:
        top = math.log(self.num_outputs)
        grid = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.62, 0.64, 0.66, 0.68)
        return Knob(
            name="entropy threshold S",
            symbol="S",
            low=0.0,
            high=top,
            sweep=tuple(round(value * top / math.log(2), 4) for value in grid),
            help="exit at the first off-ramp whose entropy is below S; larger S exits earlier (0: never)",
        )

    @property
    def default_threshold(self) -> float:
        return 0.0

    def start_from_full(self, full_head: PooledHead) -> None:
        self.ramps[-1].load_state_dict(full_head.state_dict())

    @staticmethod
    def exits(entropy: torch.Tensor, threshold: float) -> torch.Tensor:
        """DeeBERT's exit rule, shared by the engine and the one-pass sweep."""
        return entropy < threshold

    def after_layer(self, layer: int, pooled: torch.Tensor, state: State, settings: RunSettings) -> Decision:
        probs = self.ramp_logits(layer, pooled).softmax(-1)
        ramp_entropy = entropy(probs)
        state["probs"] = probs
        stop = self.exits(ramp_entropy, self.threshold(settings)) if settings.early_exit else None
        return stop, {"probs": probs, "entropy": ramp_entropy}

    def layer_values(self, layer: int, report: Report) -> Report:
        return {"prediction": report["probs"].argmax(-1), "entropy": report["entropy"]}

    def answer(self, pooled: torch.Tensor, state: State) -> torch.Tensor:
        return state["probs"]

    def sweep_exits(self, values: dict[str, torch.Tensor], threshold: float) -> torch.Tensor:
        return first_exit(self.exits(values["entropy"][:, :-1], threshold))

    def trainable_heads(self, stage: Stage) -> Iterator[nn.Parameter]:
        return (parameter for ramp in self.ramps[:-1] for parameter in ramp.parameters())

    def training_loss(
        self, encoder: Encoder, batch: TrainBatch, stage: Stage
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The sum of the cross-entropies of off-ramps 1..L-1 (the last one is the frozen full head)."""
        losses, stats = self.ramp_losses(encoder, batch)
        loss = losses[:-1].sum()
        return loss, {"loss": loss.item(), **stats}

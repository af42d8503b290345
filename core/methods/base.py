"""What every method is: a typed config, decisions around each layer, an answer, and its training.

The engine (core/engine.py) owns the layer loop and the bookkeeping of which rows are still
running; a method only says, for the rows it is shown, which of them run the next layer
(``plan``), which of them stop after it (``after_layer``), and what they answer (``answer``).
Training uses the same modules: ``training_loss`` is the method's objective, computed with the
same heads, gates and accumulations as inference.

Everything else that differs between methods is declared on the class too, as data, so that training,
evaluation, the benchmark, attributions, charts and the demo never ask for a method by name:
the ``Config`` dataclass (hyper-parameters, defaults, command-line help), the ``Knob`` a user
turns at inference, the training ``Stage`` list, the ``LayerField`` values a trace records per
layer, and the ``LayerChart`` that draws them (their types live in ``core.methods.declarations``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from core.backbone import Encoder
from core.errors import UserError
from core.heads import PooledHead
from core.methods.declarations import Knob, LayerChart, LayerField, MethodConfig, PaperClaim, Stage
from core.pooling import AUTO, pool

State = dict[str, Tensor]  # per-row running values; every tensor has the batch as dim 0
Report = dict[str, Tensor]  # per-row values recorded in the trace for one layer
Decision = tuple[Tensor | None, Report]  # a hook's rows (to run, or to stop; None: all or none) and its trace report


@dataclass(frozen=True)
class RunSettings:
    """How to run a method: its knob value (None: the checkpoint's default) and whether it may save layers."""

    threshold: float | None = None
    early_exit: bool = True


@dataclass
class TrainBatch:
    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor
    labels: Tensor


class Method(nn.Module):
    """Base class of the methods in ``core.methods``; a subclass is the whole method."""

    name: ClassVar[str]  # used in checkpoints, on command lines and in file names
    title: ClassVar[str]  # shown to people
    paper: ClassVar[str] = ""
    paper_claim: ClassVar[PaperClaim | None] = None
    summary: ClassVar[str] = ""  # one line: what it decides
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    supports_regression: ClassVar[bool] = True
    exits_early: ClassVar[bool] = False  # inputs can leave before the last layer (exit counts are reported)
    sweeps_in_one_pass: ClassVar[bool] = False  # ``sweep_exits`` reads every knob value's exits off one full-depth run
    stages: ClassVar[tuple[Stage, ...]] = ()
    layer_fields: ClassVar[tuple[LayerField, ...]] = ()
    layer_chart: ClassVar[LayerChart | None] = None
    variants_are_operating_points: ClassVar[bool] = (
        False  # the trade-off is a training setting: each trained variant is a point
    )
    decides_every_layer: ClassVar[bool] = (
        True  # reads the pooled state around every layer (False: never stops early, reads only the final state)
    )

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, config: MethodConfig | None = None):
        super().__init__()
        if num_outputs < 2 and not self.supports_regression:
            raise UserError(
                f"{self.title} needs class probabilities, so it runs classification tasks only, not regression"
            )
        self.config = config if config is not None else self.Config()
        if self.config.pooling == AUTO:
            raise UserError(
                "method_config.pooling is missing or 'auto': a model must say which pooling its heads read. "
                "Build new models with core.model.build_model (it resolves 'auto' against the backbone), or "
                'set "pooling" in method_config to "cls" or "mean"'
            )
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_outputs = num_outputs

    @classmethod
    def supports(cls, regression: bool) -> bool:
        return cls.supports_regression or not regression

    @classmethod
    def stage(cls, name: str | None) -> Stage:
        """A stage by name; None gives the first."""
        if name is None:
            return cls.stages[0]
        for stage in cls.stages:
            if stage.name == name:
                return stage
        raise UserError(
            f"{cls.title} has no training stage {name!r}; its stages: {', '.join(stage.name for stage in cls.stages)}"
        )

    @property
    def knob(self) -> Knob | None:
        """The inference-time knob, or None when the method has none (its trade-off is set in training)."""
        return None

    @property
    def default_threshold(self) -> float | None:
        """The knob's value when neither the checkpoint nor the caller sets one."""
        return None

    def new_head(self) -> PooledHead:
        return PooledHead(self.hidden_size, self.num_outputs, self.config.dropout)

    def initialise_heads(self, pooler: dict[str, Tensor] | None) -> None:
        """Start every pooler from the backbone's pretrained pooler, as BERT's own classifier does."""
        if pooler is None:
            return
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, PooledHead):
                    module.dense.weight.copy_(pooler["weight"])
                    module.dense.bias.copy_(pooler["bias"])

    def start_from_full(self, full_head: PooledHead) -> None:
        """Take over a fine-tuned full model's head (what stages that start from ``full`` do first)."""
        raise NotImplementedError

    def threshold(self, settings: RunSettings) -> float:
        return self.default_threshold if settings.threshold is None else settings.threshold

    @property
    def pooling(self) -> str:
        return self.config.pooling

    # --- inference: called by the engine for the rows still running -------------------------
    def begin(self, batch_size: int, device: torch.device) -> State:
        return {}

    def plan(
        self, layer: int, pooled: Tensor, hidden: Tensor, mask: Tensor, state: State, settings: RunSettings
    ) -> Decision:
        """Before ``layer`` (0-based), from the states entering it (``pooled``: their pooled state).

        Which rows run it (None: all of them).
        """
        return None, {}

    def after_layer(self, layer: int, pooled: Tensor, state: State, settings: RunSettings) -> Decision:
        """After ``layer``, from the pooled state it left (called for every row that reached it, run or bypassed).

        Which rows stop here (None: none).
        """
        return None, {}

    def answer(self, pooled: Tensor, state: State) -> Tensor:
        """Final output for rows that stop, from their last pooled state.

        Probabilities [b, C], or scores [b] for regression.
        """
        raise NotImplementedError

    def layer_values(self, layer: int, report: Report) -> Report:
        """A layer's ``layer_fields`` (and ``prediction``) from what ``plan``/``after_layer`` reported for it.

        Reports hold only tensors the decisions computed anyway; whatever a trace shows beyond
        them (argmax labels, bounds, probabilities from logits) is derived here, when traces are
        built, outside the timed layer loop. Default: the report already is the fields.
        """
        return report

    def sweep_exits(self, values: dict[str, Tensor], threshold: float) -> Tensor:
        """Where each row would exit at ``threshold``, read off a full-depth run (one pass serves a whole sweep).

        ``values`` holds each reported field as [rows, layers]. Returns the 1-based exit layer per
        row (0: ran to the end), the row then answering with that layer's own ``prediction``. Only
        called when ``sweeps_in_one_pass``; elsewhere the decisions change the path, so every
        threshold needs a run of its own.
        """
        raise NotImplementedError

    # --- training ---------------------------------------------------------------------------
    def trainable_heads(self, stage: Stage) -> Iterator[nn.Parameter]:
        """The method's own parameters a stage trains (default: all of them)."""
        return self.parameters()

    def training_loss(self, encoder: Encoder, batch: TrainBatch, stage: Stage) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError


def run_all_layers(encoder: Encoder, batch: TrainBatch, pooling: str) -> list[Tensor]:
    """The pooled state after every layer, running the whole batch through every layer (for training)."""
    hidden = encoder.embed(batch.input_ids, batch.token_type_ids)
    layer_mask = encoder.attention_mask_for(hidden, batch.attention_mask)
    pooled_states = []
    for index in range(encoder.num_layers):
        hidden = encoder.run_layer(index, hidden, layer_mask)
        pooled_states.append(pool(hidden, batch.attention_mask, pooling))
    return pooled_states

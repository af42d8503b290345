"""What every method is: a typed config, decisions around each layer, an answer, and its training.

The engine (core/engine.py) owns the layer loop and the bookkeeping of which rows are still
running; a method only says, for the rows it is shown, which of them run the next layer
(``plan``), which of them stop after it (``after_layer``), and what they answer (``answer``).
Training uses the same modules: ``training_loss`` is the method's objective, computed with the
same heads, gates and accumulations as inference.

Everything else that differs between methods is declared here too, as data, so that training,
evaluation, the benchmark, attributions, charts and the demo never ask for a method by name:
the ``Config`` dataclass (hyper-parameters, defaults, command-line help), the ``Knob`` a user
turns at inference, the training ``Stage`` list, the ``LayerField`` values a trace records per
layer, and the ``LayerChart`` that draws them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from core.backbone import Encoder
from core.errors import UserError
from core.heads import PooledHead
from core.pooling import AUTO, CLS, MEAN, pool

State = dict[str, torch.Tensor]  # per-row running values; every tensor has the batch as dim 0
Report = dict[str, torch.Tensor]  # per-row values recorded in the trace for one layer


def option(
    default: Any, help: str, choices: tuple | None = None, low: float | None = None, high: float | None = None
) -> Any:
    """A config field with what the command line and the error messages need to know about it."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


@dataclass
class MethodConfig:
    """A method's hyper-parameters with their defaults; saved as ``method_config`` in config.json.

    Subclasses add fields with ``option``. ``from_dict`` refuses keys it does not know, so a
    misspelt setting is an error instead of being silently ignored.
    """

    dropout: float = option(0.1, "dropout in every head while training", low=0.0, high=1.0)
    pooling: str = option(
        AUTO,
        "what every head, planner and halting unit reads: cls = the [CLS] state (the papers), mean = the mean "
        "of the token states, "
        "auto = the backbone's own pooling (its sentence-transformers config), else cls",
        choices=(AUTO, CLS, MEAN),
    )

    @classmethod
    def from_dict(cls, data: dict, where: str = "method_config") -> MethodConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"{where}: unknown setting(s) {', '.join(unknown)} for {cls.__name__}; known: "
                f"{', '.join(sorted(known))}"
            )
        config = cls(**data)
        config.validate(where)
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> MethodConfig:
        return type(self).from_dict({**self.to_dict(), **changes})

    def validate(self, where: str = "method_config") -> None:
        """Check every field against its declared choices and range."""
        for item in dataclasses.fields(self):
            value, meta = getattr(self, item.name), item.metadata
            if meta.get("choices") and value not in meta["choices"]:
                raise UserError(
                    f"{where}: {item.name} must be one of {', '.join(map(str, meta['choices']))}, not {value!r}"
                )
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise UserError(f"{where}: {item.name} must be a finite number, not {value}")
                low, high = meta.get("low"), meta.get("high")
                if (low is not None and value < low) or (high is not None and value > high):
                    raise UserError(f"{where}: {item.name} = {value} is out of range [{low}, {high}]")


@dataclass(frozen=True)
class Knob:
    """The inference-time trade-off between speed and accuracy a user can turn (``--threshold``)."""

    name: str  # what the value is, for labels: "entropy threshold S"
    symbol: str  # short name for chart rules: "S"
    low: float
    high: float
    sweep: tuple[float, ...]  # the default grid that calibration and the benchmark evaluate
    help: str  # one sentence: what a larger value does
    integer: bool = False
    step: float = 0.01  # slider step in the demo

    def check(self, value: float, method: str) -> None:
        if not (math.isfinite(value) and self.low <= value <= self.high):
            raise UserError(
                f"{self.name} {value} is out of range for {method}: use a value in [{self.low:.4g}, {self.high:.4g}]"
            )
        if self.integer and value != int(value):
            raise UserError(f"{self.name} of {method} is a whole number, not {value}")


@dataclass(frozen=True)
class Stage:
    """One training stage of a method's recipe, with the training settings it ships with.

    ``training`` holds ``training.train`` options (``lr``, ``epochs``, ``batch_size``, ``warmup``,
    ``finetune``, ``lora_rank``, ``encoder_lr``) that this stage uses unless the command line or
    a recipe file sets them, so a plain ``training.train --method M --stage S`` trains what ships.
    """

    name: str
    starts_from: (
        str  # "backbone": fresh heads; "full": the task's trained full model; "previous": this method's previous stage
    )
    trains_encoder: bool  # False: the encoder (and its adapters) stay frozen
    help: str
    training: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LayerField:
    """A value a method records per layer in the trace (``LayerStep.values[name]``)."""

    name: str
    label: str
    kind: str = "number"  # number | class (an index, shown as the label) | distribution (per-class probabilities)
    help: str = ""


@dataclass(frozen=True)
class Series:
    """One line (or bar) of a per-layer chart: a ``LayerField`` of the trace."""

    field: str
    label: str
    colour: str = "#2563eb"
    dashed: bool = False


@dataclass(frozen=True)
class LayerChart:
    """How the demo draws a method's per-layer values (interpret/charts.py renders it)."""

    title: str
    y_title: str
    series: tuple[Series, ...]
    mark: str = "line"  # line | bar (bars are coloured by whether the layer ran)
    y_domain: tuple[float, float] | None = None
    knob_rule: str | None = None  # draw the run's knob value as a horizontal rule with this label
    caption: str = ""


@dataclass(frozen=True)
class PaperClaim:
    """A method's headline result as its paper states it (quoted in the benchmark, never measured here)."""

    claim: str
    metric_pct_of_full: float | None = None
    speedup: float | None = None


@dataclass(frozen=True)
class RunSettings:
    """How to run a method: its knob value (None: the checkpoint's default) and whether it may save layers."""

    threshold: float | None = None
    early_exit: bool = True


@dataclass
class TrainBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    labels: torch.Tensor


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
                "Build new models with core.model.build_model (it resolves 'auto' against the backbone); "
                'in a checkpoint written before this setting existed, add "pooling": "cls" to method_config '
                "in config.json"
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

    def initialise_heads(self, pooler: dict[str, torch.Tensor] | None) -> None:
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
        self,
        layer: int,
        pooled: torch.Tensor,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        state: State,
        settings: RunSettings,
    ) -> tuple[torch.Tensor | None, Report]:
        """Before ``layer`` (0-based), from the states entering it (``pooled``: their pooled state).

        Which rows run it (None: all of them).
        """
        return None, {}

    def after_layer(
        self, layer: int, pooled: torch.Tensor, state: State, settings: RunSettings
    ) -> tuple[torch.Tensor | None, Report]:
        """After ``layer``, from the pooled state it left (called for every row that reached it, run or bypassed).

        Which rows stop here (None: none).
        """
        return None, {}

    def answer(self, pooled: torch.Tensor, state: State) -> torch.Tensor:
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

    def sweep_exits(self, values: dict[str, torch.Tensor], threshold: float) -> torch.Tensor:
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

    def training_loss(
        self, encoder: Encoder, batch: TrainBatch, stage: Stage
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def run_all_layers(encoder: Encoder, batch: TrainBatch, pooling: str) -> list[torch.Tensor]:
    """The pooled state after every layer, running the whole batch through every layer (for training)."""
    hidden = encoder.embed(batch.input_ids, batch.token_type_ids)
    layer_mask = encoder.attention_mask_for(hidden, batch.attention_mask)
    pooled_states = []
    for index in range(encoder.num_layers):
        hidden = encoder.run_layer(index, hidden, layer_mask)
        pooled_states.append(pool(hidden, batch.attention_mask, pooling))
    return pooled_states

"""The data every method declares about itself: its config, knob, training stages, per-layer fields and chart.

Kept apart from ``core.methods.base`` (the hooks the engine calls) so a method module imports its declarations in
one line and training, the benchmark and the demo can read them without the engine's types.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.errors import UserError
from core.pooling import AUTO, CLS, MEAN


def option(
    default: Any, help: str, choices: tuple | None = None, low: float | None = None, high: float | None = None
) -> Any:
    """A config field with what the command line and the error messages need to know about it."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


def choice_option(default: str, what: str, meanings: dict[str, str]) -> Any:
    """An ``option`` whose values are the keys of ``meanings``; its help says what each value means.

    The choices and their help then come from one table, so a value cannot be offered without being explained.
    """
    explained = ", ".join(f"{value} = {meaning}" for value, meaning in meanings.items())
    return option(default, f"{what}: {explained}", choices=tuple(meanings))


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

    # setting -> {the value's spelling in checkpoints of earlier versions: its name now}, so they load unchanged
    renamed_values: ClassVar[dict[str, dict[str, str]]] = {}
    # setting added later -> the value that reproduces what checkpoints saved without it did (their config.json
    # then still records how they were trained, instead of the new default)
    # (pooling: every head read [CLS] before decisions could read another pooled state)
    values_before_added: ClassVar[dict[str, object]] = {"pooling": CLS}

    @classmethod
    def from_dict(cls, data: dict, where: str = "method_config") -> MethodConfig:
        data = {
            name: cls.renamed_values.get(name, {}).get(value, value) if isinstance(value, str) else value
            for name, value in data.items()
        }
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
    ships: bool = True  # False: a step toward a later stage, or an ablation; its checkpoints are never shipped


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

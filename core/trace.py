"""The per-input trace: everything the UI, the query log and the reports read about one prediction."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class LayerStep:
    """One layer of one input.

    ``prediction`` is the layer's own answer where the method has one (an off-ramp, a per-layer
    classifier): a label, or a score for regression. ``values`` holds the method's other
    per-layer numbers under the names its ``layer_fields`` declare (e.g. ``entropy``,
    ``planner_prob``, ``halting_prob``); empty for layers the input did not reach.
    """

    layer: int  # 1-based
    executed: bool
    reached: bool  # False after an early exit
    prediction: str | float | None = None
    values: dict[str, float | str | dict[str, float]] = field(default_factory=dict)


@dataclass
class Trace:
    method: str
    task: str
    num_layers: int
    prediction: str | float  # label name, or the score for regression
    probabilities: dict[str, float]  # empty for regression
    layers_executed: list[int]  # 1-based
    layers_skipped: list[int]  # bypassed by a planner (DPBERT)
    layers_not_reached: list[int]  # after an early exit
    exit_layer: int | None  # the layer after which the input left early; None if it went to the end
    expected_speedup: float  # num_layers / len(layers_executed)
    latency_ms: float  # wall time of the batch this input ran in, divided by the batch size
    threshold: float | None
    early_exit: bool
    text: str
    text_pair: str | None = None
    truncated: bool = False
    batch_size: int = 1
    checkpoint: str | None = None
    precision: str = "fp32"  # fp32, bf16 or int8 (core/precision.py)
    per_layer: list[LayerStep] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

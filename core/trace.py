"""The per-input trace: everything the UI, the query log and the reports read about one prediction."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class LayerStep:
    """One layer of one input. Fields a method does not have stay None."""

    layer: int  # 1-based
    executed: bool
    reached: bool  # False after an early exit
    prediction: str | None = None  # this layer's own classifier (DeeBERT off-ramp, DACT y_n)
    entropy: float | None = None  # DeeBERT
    planner_prob: float | None = None  # DPBERT: probability of executing this layer
    halting_prob: float | None = None  # DACT h_n
    accumulated: dict[str, float] | None = None  # DACT a_n
    top_class: str | None = None  # DACT: class with the largest a_n
    top_lower_bound: float | None = None  # DACT
    runner_up_upper_bound: float | None = None  # DACT


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
    per_layer: list[LayerStep] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

"""The per-input trace: everything the UI, the query log and the reports read about one prediction.

Traces are built here from a batch the engine ran (``build_traces``): labels instead of class
indices, plain floats instead of tensors, 1-based layer lists. They are for people and logs;
counting (evaluation, calibration, sweeps) reads the engine's tensors (core/outcome.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model runs the batches that traces are built from, so it imports this module
    import torch

    from core.methods import RunSettings
    from core.model import AdaptiveModel
    from core.outcome import RanBatch


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


def build_traces(
    model: AdaptiveModel,
    batch: RanBatch,
    settings: RunSettings,
    texts: list[str],
    pairs: list[str] | None,
    layer_values: bool = False,
) -> list[Trace]:
    """One trace per row of a batch ``model`` ran with ``settings``; ``texts`` and ``pairs`` are the batch's inputs, in
    its row order.

    Answers and paths are always built; each layer's own prediction and the method's per-layer
    values only with ``layer_values`` (deriving them costs as much as a small layer at batch size 1).
    """
    result = batch.result
    kinds = {item.name: item.kind for item in model.method.layer_fields}
    reached, executed = result.paths()
    outputs, exit_layers = result.outputs.tolist(), result.exit_layer.tolist()  # read once: single values cost more
    reports = result.reports(model.method) if layer_values else [{} for _ in range(model.num_layers)]
    labels, num_layers = model.config.labels, model.num_layers
    traces = []
    for row, text in enumerate(texts):
        output = outputs[row]
        if labels is None:
            prediction: str | float = float(output)
            probabilities: dict[str, float] = {}
        else:
            probabilities = dict(zip(labels, output))
            prediction = labels[max(range(len(output)), key=output.__getitem__)]  # the first largest, as argmax
        ran, got_to = executed[row], reached[row]
        layers_executed = [layer + 1 for layer in range(num_layers) if ran[layer]]
        traces.append(
            Trace(
                method=model.config.method,
                task=model.config.task,
                num_layers=num_layers,
                prediction=prediction,
                probabilities=probabilities,
                layers_executed=layers_executed,
                layers_skipped=[layer + 1 for layer in range(num_layers) if got_to[layer] and not ran[layer]],
                layers_not_reached=[layer + 1 for layer in range(num_layers) if not got_to[layer]],
                exit_layer=exit_layers[row] or None,
                expected_speedup=num_layers / max(len(layers_executed), 1),
                latency_ms=batch.latency_ms,
                threshold=settings.threshold,
                early_exit=settings.early_exit,
                text=text,
                text_pair=None if pairs is None else pairs[row],
                truncated=batch.truncated[row],
                batch_size=len(texts),
                checkpoint=model.source,
                precision=model.precision,
                per_layer=[
                    _layer_step(reports[layer], kinds, labels, row, layer, ran[layer], got_to[layer])
                    for layer in range(num_layers)
                ],
            )
        )
    return traces


def _layer_step(
    report: dict[str, torch.Tensor],
    kinds: dict[str, str],
    labels: list[str] | None,
    row: int,
    layer: int,
    executed: bool,
    reached: bool,
) -> LayerStep:
    """One row's step at one layer: the layer's own prediction apart, its other fields under their names."""
    step = LayerStep(layer=layer + 1, executed=executed, reached=reached)
    if not reached:
        return step
    for name, values in report.items():
        value = _field_value(kinds.get(name, "number"), labels, values[row])
        if name == "prediction":
            step.prediction = value
        else:
            step.values[name] = value
    return step


def _field_value(kind: str, labels: list[str] | None, value: torch.Tensor) -> str | float | dict[str, float]:
    """A reported tensor value as the trace shows it: a label, per-class probabilities, or a number."""
    if kind == "class" and labels is not None:
        return labels[int(value)]
    if kind == "distribution":
        return {label: float(p) for label, p in zip(labels, value.tolist())}
    return float(value)

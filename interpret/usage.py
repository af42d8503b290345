"""How often each layer runs and where inputs leave: from traces, from logged queries, or from a dev set.

Everything here returns the same long table (one row per method and layer) so one chart and one
report serve all three sources. A dev set's usage is the one its checkpoint records: evaluation
counts it from the engine's tensors when a checkpoint is trained, calibrated or published, and
the demo reads that record instead of running a dev set it may not have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd

from core.model import AdaptiveModel

USAGE_COLUMNS = ["method", "layer", "executed", "exited", "inputs"]


def layer_usage(records: Iterable[Mapping]) -> pd.DataFrame:
    """Per method and layer: the fraction of inputs that executed the layer and that exited early right after it.

    ``records`` are trace dicts (``Trace.to_dict()``) or query-log rows: each needs ``method``,
    ``num_layers``, ``layers_executed`` and ``exit_layer``. As in evaluation, inputs
    that ran to the end are not exits; ``exited`` is filled only for methods where some input
    exited early.
    """
    by_method: dict[str, list[Mapping]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(record)
    rows = []
    for method, group in by_method.items():
        num_layers = max(record["num_layers"] for record in group)
        exits_early = any(record["exit_layer"] is not None for record in group)
        for layer in range(1, num_layers + 1):
            executed = sum(layer in record["layers_executed"] for record in group)
            exited = sum(record["exit_layer"] == layer for record in group)
            rows.append(
                {
                    "method": method,
                    "layer": layer,
                    "executed": executed / len(group),
                    "exited": exited / len(group) if exits_early else None,
                    "inputs": len(group),
                }
            )
    return _typed(pd.DataFrame(rows, columns=USAGE_COLUMNS))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Shares as floats (NaN where a method has no exits), so frames of different methods concatenate into numeric
    columns.
    """
    return frame.astype({"executed": float, "exited": float})


def usage_by_task(records: list[Mapping]) -> dict[str, pd.DataFrame]:
    """``layer_usage`` per task (tasks differ in methods and in what the layers mean), tasks in name order."""
    return {
        task: layer_usage([record for record in records if record["task"] == task])
        for task in sorted({record["task"] for record in records})
    }


def precomputed_usage(model: AdaptiveModel) -> pd.DataFrame | None:
    """The dev-set usage recorded with the checkpoint, if any.

    It is kept in ``metrics['layer_frequency']`` and ``metrics['exit_frequency']``.
    """
    metrics = model.config.metrics or {}
    executed = metrics.get("layer_frequency")
    if not isinstance(executed, list) or len(executed) != model.num_layers:
        return None
    exited = metrics.get("exit_frequency")
    exited = exited if isinstance(exited, list) and len(exited) == model.num_layers else [None] * model.num_layers
    inputs = metrics.get("examples")
    return _typed(
        pd.DataFrame(
            [
                {
                    "method": model.config.method,
                    "layer": layer,
                    "executed": float(run),
                    "exited": exit_share,
                    "inputs": inputs,
                }
                for layer, (run, exit_share) in enumerate(zip(executed, exited), start=1)
            ],
            columns=USAGE_COLUMNS,
        )
    )

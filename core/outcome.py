"""A run over many inputs as tensors in input order: what evaluation, calibration and sweeps count.

``AdaptiveModel.run_batches`` sends the inputs through the engine in batches of similar length;
each ``RanBatch`` is one of them. ``Outcome.gather`` puts the batches' rows back in input order.
Traces (core/trace.py) are built from the same batches for people to read; counting reads the
tensors here, so no number makes a round trip through a label or a printed float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.engine import BatchResult
from core.methods import Method, RunSettings


@dataclass
class RanBatch:
    """One batch as the engine ran it."""

    rows: list[int]  # the position among the run's inputs of each row of the batch
    result: BatchResult  # on the CPU
    latency_ms: float  # wall time of the batch divided by its size
    truncated: list[bool]  # per row: the input had more tokens than the model reads, and was cut


@dataclass
class Outcome:
    """Every input's result of one run, in input order."""

    settings: RunSettings  # how the run was made (the knob value resolved)
    outputs: torch.Tensor  # [N, C] probabilities or [N] scores
    executed: torch.Tensor  # [N, L] bool: the layer was computed for the input
    reached: torch.Tensor  # [N, L] bool: the input had not exited before the layer
    exit_layer: torch.Tensor  # [N] 1-based layer of an early exit, 0 if none
    reports: list[
        dict[str, torch.Tensor]
    ]  # per layer, the method's layer fields as [N, ...] (NaN, or -1 for integers, where not reached)

    @classmethod
    def gather(cls, batches: list[RanBatch], method: Method, settings: RunSettings) -> Outcome:
        """The batches' per-row tables concatenated, each row put back at its input's position."""
        order = torch.tensor([row for batch in batches for row in batch.rows])
        results = [batch.result for batch in batches]

        def in_input_order(parts: list[torch.Tensor]) -> torch.Tensor:
            table = torch.empty((len(order), *parts[0].shape[1:]), dtype=parts[0].dtype)
            table[order] = torch.cat(parts)
            return table

        batch_reports = [result.reports(method) for result in results]
        reports = []
        for layer in range(results[0].num_layers):
            names = dict.fromkeys(name for tables in batch_reports for name in tables[layer])
            reports.append(
                {
                    name: in_input_order(_field_parts(name, [tables[layer] for tables in batch_reports], results))
                    for name in names
                }
            )
        reached, executed = zip(*(result.path_tables() for result in results))
        return cls(
            settings=settings,
            outputs=in_input_order([result.outputs for result in results]),
            executed=in_input_order(list(executed)),
            reached=in_input_order(list(reached)),
            exit_layer=in_input_order([result.exit_layer for result in results]),
            reports=reports,
        )

    def layer_table(self, name: str) -> torch.Tensor:
        """A layer field over every layer: [N, L] (or [N, L, C] for a distribution)."""
        return torch.stack([report[name] for report in self.reports], dim=1)


def _field_parts(name: str, tables: list[dict[str, torch.Tensor]], results: list[BatchResult]) -> list[torch.Tensor]:
    """One layer field of each batch.

    A batch none of whose rows reached the layer gives its rows the not-reached fill.
    """
    sample = next(table[name] for table in tables if name in table)
    fill = float("nan") if sample.is_floating_point() else -1
    return [
        table[name] if name in table else torch.full((result.batch_size, *sample.shape[1:]), fill, dtype=sample.dtype)
        for table, result in zip(tables, results)
    ]

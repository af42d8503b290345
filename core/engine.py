"""The batched layer loop shared by every method.

Rows of a batch make their own decisions. A row that a planner bypasses is not fed through the
layer; a row that exits is removed from the batch, and the padding that only it needed is cut
off. A layer no remaining row needs is never called. The loop only appends what happened at
each layer; per-row tables for traces are built afterwards, outside the timed path.

Per layer the loop reads at most one number back from the tensors (how many rows a planner
runs, how many rows stop), and a method's report holds only tensors its decision computed
anyway: what a trace shows that the decision does not need (argmax labels, bounds, planner
probabilities) is derived from them by ``Method.layer_values`` when traces are built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.backbone import Encoder, trim_padding
from core.methods.base import Method, Report, RunSettings, State
from core.pooling import pool


@dataclass
class LayerRecord:
    """What happened at one layer, for the rows that reached it."""

    rows: torch.Tensor  # original batch index of each row that reached the layer
    ran: torch.Tensor | None  # which of those rows executed it (None: all of them)
    # the method's raw per-row values, aligned with ``rows`` (``Method.layer_values`` turns them into its layer fields)
    report: Report


@dataclass
class BatchResult:
    """Per-row outcome of one batch, in the batch's original row order."""

    outputs: torch.Tensor  # [B, C] probabilities or [B] scores
    exit_layer: torch.Tensor  # [B] 1-based layer of an early exit, 0 if none
    layers: list[LayerRecord]
    num_layers: int

    @property
    def batch_size(self) -> int:
        return self.outputs.shape[0]

    def paths(self) -> tuple[list[list[bool]], list[list[bool]]]:
        """Per row and layer, as lists: (reached: the row got as far as the layer, executed: the layer was computed for
        it). Read off the layer records in Python: at small batches that costs less than filling tensors per layer.
        """
        reached = [[False] * self.num_layers for _ in range(self.batch_size)]
        executed = [[False] * self.num_layers for _ in range(self.batch_size)]
        for layer, record in enumerate(self.layers):
            rows = record.rows.tolist()
            for row, computed in zip(rows, [True] * len(rows) if record.ran is None else record.ran.tolist()):
                reached[row][layer], executed[row][layer] = True, computed
        return reached, executed

    def path_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``paths`` as [B, L] bool tensors on the device the batch ran on: (reached, executed)."""
        reached, executed = self.paths()
        device = self.outputs.device
        return torch.tensor(reached, dtype=torch.bool, device=device), torch.tensor(
            executed, dtype=torch.bool, device=device
        )

    def reports(self, method: Method) -> list[dict[str, torch.Tensor]]:
        """Per layer, each of the method's layer fields as a [B, ...] tensor (NaN, or -1 for integers, where not
        reached).
        """
        tables = []
        for layer, record in enumerate(self.layers):
            table = {}
            for name, value in method.layer_values(layer, record.report).items():
                fill = -1 if not value.is_floating_point() else float("nan")
                table[name] = torch.full(
                    (self.batch_size, *value.shape[1:]), fill, dtype=value.dtype, device=value.device
                )
                table[name][record.rows] = value
            tables.append(table)
        tables += [{} for _ in range(self.num_layers - len(tables))]
        return tables


def count(flags: torch.Tensor) -> int:
    """How many of a row mask are true: the loop's one read-back per decision (one call at batch size 1)."""
    return int(flags.item()) if flags.shape[0] == 1 else int(flags.sum())


def padding_of(mask: torch.Tensor, layer_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask pooling needs: None when no row is padded.

    That is always so at batch size 1, and so wherever the encoder needed no layer mask (sdpa with
    nothing padded); knowing it costs no read-back.
    """
    return None if mask.shape[0] == 1 or layer_mask is None else mask


def _select(state: State, rows: torch.Tensor) -> State:
    return {name: value[rows] for name, value in state.items()}


@torch.inference_mode()
def run_batch(
    encoder: Encoder,
    method: Method,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    settings: RunSettings,
) -> BatchResult:
    """Run ``method`` on one tokenized batch.

    The pooled state is computed once per layer, for the rows still running.
    """
    with encoder.running():  # the ONNX Runtime encoder hands the cores to its sessions
        batch_size, num_layers = input_ids.shape[0], encoder.num_layers
        device = input_ids.device
        hidden = encoder.embed(input_ids, token_type_ids)
        rows = torch.arange(batch_size, device=device)  # original index of each row still running
        mask = attention_mask
        layer_mask = encoder.attention_mask_for(hidden, mask)
        state = method.begin(batch_size, device)
        exit_layer = torch.zeros(batch_size, dtype=torch.long, device=device)
        outputs: torch.Tensor | None = None
        records: list[LayerRecord] = []
        every_layer = method.decides_every_layer
        pooling_mask = padding_of(mask, layer_mask)
        pooled = pool(hidden, pooling_mask, method.pooling) if every_layer else None  # entering the next layer

        for layer in range(num_layers):
            last = layer == num_layers - 1
            run, report = method.plan(layer, pooled, hidden, mask, state, settings)
            changed = True
            if run is not None:
                running = count(run)  # the one read-back before the layer
                if running == run.shape[0]:
                    run = None
                elif running:
                    hidden = encoder.run_layer_on_rows(layer, hidden, mask, run.nonzero().squeeze(1))
                else:
                    changed = False
            if run is None:
                hidden = encoder.run_layer(layer, hidden, layer_mask)
            if changed and (every_layer or last):
                pooled = pool(hidden, pooling_mask, method.pooling)

            stop, after_report = method.after_layer(layer, pooled, state, settings)
            records.append(LayerRecord(rows, run, {**report, **after_report} if report else after_report))
            stopping = 0 if stop is None or last else count(stop)  # and the one after it
            if not (last or stopping):
                continue

            if last or stopping == rows.shape[0]:  # every row still running leaves here
                answer = method.answer(pooled, state)
                if outputs is None:  # nobody left before: the rows are still the whole batch, in order
                    outputs = answer
                else:
                    outputs[rows] = answer.to(outputs.dtype)
                if not last:
                    exit_layer[rows] = layer + 1
                break

            answer = method.answer(pooled[stop], _select(state, stop))
            if outputs is None:
                outputs = torch.zeros((batch_size, *answer.shape[1:]), dtype=answer.dtype, device=device)
            outputs[rows[stop]] = answer.to(outputs.dtype)
            exit_layer[rows[stop]] = layer + 1
            keep = ~stop
            rows, state, pooled = rows[keep], _select(state, keep), pooled[keep]
            hidden, mask = trim_padding(hidden[keep], mask[keep])
            layer_mask = encoder.attention_mask_for(hidden, mask)
            pooling_mask = padding_of(mask, layer_mask)

        return BatchResult(outputs=outputs, exit_layer=exit_layer, layers=records, num_layers=num_layers)

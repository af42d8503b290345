"""The batched layer loop shared by every method.

Rows of a batch make their own decisions. A row that a planner bypasses is not fed through the
layer; a row that exits is removed from the batch, and the padding that only it needed is cut
off. A layer no remaining row needs is never called.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.backbone import Encoder
from core.methods.base import Method, Report, RunSettings, State


@dataclass
class BatchResult:
    """Per-row outcome of one batch, in the batch's original row order."""

    outputs: torch.Tensor  # [B, C] probabilities or [B] scores
    executed: torch.Tensor  # [B, L] bool
    exit_layer: torch.Tensor  # [B] 1-based layer of an early exit, 0 if none
    reports: list[dict[str, torch.Tensor]]  # per layer: name -> [B, ...] (NaN / -1 where not reached)
    reached: torch.Tensor  # [B, L] bool


def _select(state: State, rows: torch.Tensor) -> State:
    return {name: value[rows] for name, value in state.items()}


def _record(store: dict[str, torch.Tensor], report: Report, rows: torch.Tensor, batch_size: int) -> None:
    for name, value in report.items():
        if name not in store:
            fill = -1 if value.dtype in (torch.int64, torch.int32, torch.bool) else float("nan")
            store[name] = torch.full((batch_size, *value.shape[1:]), fill, dtype=value.dtype, device=value.device)
        store[name][rows] = value


def _trim_padding(hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut trailing columns that are padding for every row (the tokenizer pads on the right)."""
    length = int(attention_mask.sum(1).max())
    return hidden[:, :length], attention_mask[:, :length]


@torch.inference_mode()
def run_batch(
    encoder: Encoder,
    method: Method,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    settings: RunSettings,
) -> BatchResult:
    batch_size, num_layers = input_ids.shape[0], encoder.num_layers
    device = input_ids.device
    hidden = encoder.embed(input_ids, token_type_ids)
    rows = torch.arange(batch_size, device=device)  # original index of each row still running
    mask = attention_mask
    layer_mask = encoder.attention_mask_for(hidden, mask)
    state = method.begin(batch_size, device)

    executed = torch.zeros(batch_size, num_layers, dtype=torch.bool, device=device)
    reached = torch.zeros_like(executed)
    exit_layer = torch.zeros(batch_size, dtype=torch.long, device=device)
    outputs: torch.Tensor | None = None
    reports: list[dict[str, torch.Tensor]] = [{} for _ in range(num_layers)]

    for layer in range(num_layers):
        reached[rows, layer] = True
        run, report = method.plan(layer, hidden[:, 0], state, settings)
        if run is None or bool(run.all()):
            hidden = encoder.run_layer(layer, hidden, layer_mask)
            executed[rows, layer] = True
        elif bool(run.any()):
            chosen = run.nonzero().squeeze(1)
            sub_hidden, sub_mask = _trim_padding(hidden[chosen], mask[chosen])
            new = encoder.run_layer(layer, sub_hidden, encoder.attention_mask_for(sub_hidden, sub_mask))
            hidden = hidden.clone()
            hidden[chosen, : new.shape[1]] = new
            executed[rows[chosen], layer] = True

        stop, after_report = method.after_layer(layer, hidden[:, 0], state, settings)
        _record(reports[layer], {**report, **after_report}, rows, batch_size)
        last = layer == num_layers - 1
        if last:
            stop = torch.ones(len(rows), dtype=torch.bool, device=device)
        if stop is None or not bool(stop.any()):
            continue

        answer = method.answer(hidden[stop, 0], _select(state, stop))
        if outputs is None:
            outputs = torch.zeros((batch_size, *answer.shape[1:]), dtype=answer.dtype, device=device)
        outputs[rows[stop]] = answer
        if not last:
            exit_layer[rows[stop]] = layer + 1
            keep = ~stop
            if not bool(keep.any()):
                break
            rows, state = rows[keep], _select(state, keep)
            hidden, mask = _trim_padding(hidden[keep], mask[keep])
            layer_mask = encoder.attention_mask_for(hidden, mask)

    return BatchResult(outputs=outputs, executed=executed, exit_layer=exit_layer, reports=reports, reached=reached)

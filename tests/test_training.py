"""Training: data quirks, metrics, what each recipe updates, resuming, and evaluation of a saved model."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from core.checkpoint import load_checkpoint, read_config, save_checkpoint
from core.errors import UserError
from core.lora import add_lora
from core.methods import METHODS
from core.methods.base import TrainBatch
from training import train as train_module
from training.calibration import Goal, choose
from training.data import DEFAULT_DATA_DIR, load_split
from training.evaluate import evaluate, sweep
from training.metrics import MAIN_METRIC, glue_metrics
from training.stages import TrainingObjective, starting_model, trainable_parameters
from training.targets import share_of_full

ROWS = [
    ("a gorgeous , witty , seductive movie .", "the film is charming .", "1"),
    ("the plot is nothing but boilerplate clichés", "the script is bad", "0"),
    ('he said " it is " fine', "it is fine", "1"),  # an unbalanced quote, as in real GLUE files
    ("an utterly incompetent conclusion", "a competent ending", "0"),
    ("i liked it", "i did not like it at all", "0"),
    ("it 's a charming journey .", "a journey", "1"),
] * 3


@pytest.fixture
def glue_dir(tmp_path) -> Path:
    """A miniature glue_data folder in the official layout (MRPC with its byte-order mark, CoLA without header)."""
    mrpc = tmp_path / "MRPC"
    mrpc.mkdir()
    for split in ("train", "dev"):
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [
            f"{label}\t1\t2\t{a}\t{b}" for a, b, label in ROWS
        ]
        (mrpc / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "dev.tsv").write_text("".join(f"src\t{label}\t\t{a}\n" for a, _, label in ROWS), encoding="utf-8")
    return tmp_path


def test_reader_handles_bom_quotes_and_missing_header(glue_dir):
    mrpc = load_split("MRPC", "train", glue_dir)
    assert len(mrpc) == len(ROWS) and mrpc[2]["text"] == 'he said " it is " fine' and mrpc[2]["label"] == 1
    cola = load_split("CoLA", "dev", glue_dir)
    assert len(cola) == len(ROWS) and cola[1]["text"] == ROWS[1][0] and cola[1]["label"] == 0


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nothing")):
        load_split("RTE", "train", tmp_path / "nothing")
    with pytest.raises(UserError, match="no train split of QNLI"):
        load_split("QNLI", "train", tmp_path) if (tmp_path / "QNLI").mkdir() is None else None


@pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason="the shared GLUE folder is not beside the project")
@pytest.mark.parametrize(
    "task, split, rows",
    [
        ("MRPC", "train", 3668),
        ("RTE", "dev", 277),
        ("STS-B", "dev", 1500),
        ("CoLA", "train", 8551),
        ("QNLI", "dev", 5463),
        ("SST-2", "dev", 872),
    ],
)
def test_shared_glue_files_give_the_official_counts(task, split, rows):
    dataset = load_split(task, split)
    assert len(dataset) == rows
    assert all(isinstance(text, str) and text for text in dataset["text"][:50])


def test_glue_metrics():
    assert glue_metrics("MRPC", [1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx({"accuracy": 0.75, "f1": 2 / 3})
    assert glue_metrics("CoLA", [1, 0, 1, 0], [1, 0, 1, 0])["matthews"] == pytest.approx(1.0)
    assert glue_metrics("STS-B", [1.0, 2.0, 3.0], [2.0, 4.0, 6.5])["spearman"] == pytest.approx(1.0)


@pytest.fixture
def stage_one(make_model, tmp_path) -> str:
    """A 'trained' stage-1 checkpoint on the tiny backbone, with LoRA adapters."""
    model = make_model("full")
    model.config.lora = add_lora(model.encoder, rank=4, alpha=8)
    model.config.encoder_weights = "lora"
    model.config.trained = True
    return str(save_checkpoint(model, tmp_path / "stage1"))


def batch_of(model, rows=ROWS[:6]) -> dict[str, torch.Tensor]:
    encoded = model.tokenizer([a for a, _, _ in rows], [b for _, b, _ in rows], padding=True, return_tensors="pt")
    return {**encoded, "labels": torch.tensor([int(label) for _, _, label in rows])}


def changed_after_one_step(model, stage_name: str | None = None) -> set[str]:
    torch.manual_seed(0)
    stage = model.method.stage(stage_name)
    parameters = trainable_parameters(model, stage)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    objective = TrainingObjective(model, stage).train()
    optimizer = torch.optim.SGD(parameters, lr=1.0)
    for _ in range(2):  # two steps: LoRA's B starts at zero, so A moves only from the second step on
        loss, _ = objective(**batch_of(model))
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def start(method: str, stage: str | None, backbone: str, init: str | None = None, task: str = "MRPC", **settings):
    return starting_model(method, task, METHODS[method].stage(stage), settings, backbone, init, "lora", 4)


def test_stage_one_trains_adapters_and_head_only(tiny_backbone):
    model = start("full", None, tiny_backbone)
    changed = changed_after_one_step(model)
    assert any("lora_" in name for name in changed) and any(name.startswith("method.head") for name in changed)
    assert all("lora_" in name or name.startswith("method.") for name in changed)


def test_deebert_stage_two_touches_only_the_early_off_ramps(stage_one, tiny_backbone):
    model = start("deebert", None, tiny_backbone, stage_one)
    changed = changed_after_one_step(model)
    last = f"method.ramps.{model.num_layers - 1}."
    assert changed and all(name.startswith("method.ramps.") and not name.startswith(last) for name in changed)
    assert {name.split(".")[2] for name in changed} == {str(i) for i in range(model.num_layers - 1)}


def test_dact_trains_encoder_and_halting_jointly(stage_one, tiny_backbone):
    model = start("dact", None, tiny_backbone, stage_one, tau=0.1)
    assert model.method.config.tau == 0.1
    changed = changed_after_one_step(model)
    assert any("lora_" in name for name in changed)
    assert any(name.startswith("method.halting.") for name in changed) and any(
        name.startswith("method.classifiers.") for name in changed
    )


def test_dpbert_relaxed_stage_leaves_the_backbone_untouched(stage_one, tiny_backbone):
    model = start("dpbert", "relaxed", tiny_backbone, stage_one, target_skip_rate=0.5)
    changed = changed_after_one_step(model, "relaxed")
    assert any(name.startswith("method.planners.") for name in changed)
    assert not any(name.startswith("encoder.") for name in changed)


def test_dpbert_rl_stage_changes_planners_and_backbone(stage_one, tiny_backbone):
    relaxed = start("dpbert", "relaxed", tiny_backbone, stage_one, target_skip_rate=0.5)
    relaxed.config.trained = True
    folder = save_checkpoint(relaxed, Path(stage_one).parent / "relaxed")
    model = start("dpbert", "rl", tiny_backbone, str(folder), reward_loss_weight=20.0)
    assert model.method.config.target_skip_rate == 0.5 and model.method.config.reward_loss_weight == 20.0, (
        "the rl stage keeps the relaxed stage's settings unless told otherwise"
    )
    changed = changed_after_one_step(model, "rl")
    assert any(name.startswith("method.planners.") for name in changed)
    assert any("lora_" in name for name in changed)


def run_training(glue_dir, backbone, out, *extra) -> dict:
    args = [
        "--task",
        "MRPC",
        "--data-dir",
        str(glue_dir),
        "--backbone",
        backbone,
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--no-bf16",
        "--quiet",
        "--lora-rank",
        "4",
        *extra,
    ]
    assert train_module.main(args) == 0
    return json.loads((Path(out) / "config.json").read_text())


def test_every_recipe_runs_from_the_command_line_and_saves_an_evaluable_checkpoint(glue_dir, tiny_backbone, tmp_path):
    config = run_training(glue_dir, tiny_backbone, tmp_path / "full", "--method", "full", "--max-steps", "2")
    assert config["trained"] and config["training"]["steps"] == 2 and config["metrics"]["metric_name"] == "f1"
    assert config["training"]["validation_split"]["rows"] == 2 and config["training"]["train_rows"] == len(ROWS) - 2
    for method, extra in [
        ("deebert", []),
        ("dact", ["--tau", "0.03"]),
        ("dpbert", ["--stage", "relaxed", "--first-layer", "mean"]),
        ("pabee", []),
    ]:
        config = run_training(
            glue_dir,
            tiny_backbone,
            tmp_path / method,
            "--method",
            method,
            "--init",
            str(tmp_path / "full"),
            "--max-steps",
            "1",
            *extra,
        )
        assert (
            config["method"] == method
            and config["method_config"] == METHODS[method].Config.from_dict(config["method_config"]).to_dict()
        )
    assert json.loads((tmp_path / "dact" / "config.json").read_text())["method_config"]["tau"] == 0.03
    assert json.loads((tmp_path / "dpbert" / "config.json").read_text())["method_config"]["first_layer"] == "mean"
    config = run_training(
        glue_dir,
        tiny_backbone,
        tmp_path / "rl",
        "--method",
        "dpbert",
        "--stage",
        "rl",
        "--init",
        str(tmp_path / "dpbert"),
        "--max-steps",
        "1",
    )
    model = load_checkpoint(tmp_path / "rl")
    result = evaluate(model, load_split("MRPC", "dev", glue_dir))
    assert result["examples"] == len(ROWS) and len(result["layer_frequency"]) == model.num_layers


def test_resumed_training_matches_an_uninterrupted_run(glue_dir, tiny_backbone, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_training(glue_dir, tiny_backbone, straight, "--method", "full", "--max-steps", "6", "--save-every", "3")

    save = train_module.ResumeState.save

    def save_then_crash(self, *args):
        save(self, *args)
        raise KeyboardInterrupt  # the machine stops right after the state of step 3 was written

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(train_module.ResumeState, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_training(glue_dir, tiny_backbone, interrupted, "--method", "full", "--max-steps", "6", "--save-every", "3")
    monkeypatch.setattr(train_module.ResumeState, "save", save)
    assert not (interrupted / "config.json").exists()
    run_training(
        glue_dir, tiny_backbone, interrupted, "--method", "full", "--max-steps", "6", "--save-every", "3", "--resume"
    )
    a, b = load_file(straight / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)

    # a stage with running statistics (DPBERT's standardised planners): they are resumed too
    dpbert = (
        "--method",
        "dpbert",
        "--stage",
        "relaxed",
        "--init",
        str(straight),
        "--planner-input",
        "standardized",
        "--max-steps",
        "6",
        "--save-every",
        "3",
    )
    run_training(glue_dir, tiny_backbone, tmp_path / "dpbert-straight", *dpbert)
    monkeypatch.setattr(train_module.ResumeState, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run_training(glue_dir, tiny_backbone, tmp_path / "dpbert-interrupted", *dpbert)
    monkeypatch.setattr(train_module.ResumeState, "save", save)
    run_training(glue_dir, tiny_backbone, tmp_path / "dpbert-interrupted", *dpbert, "--resume")
    a, b = (
        load_file(tmp_path / "dpbert-straight" / "model.safetensors"),
        load_file(tmp_path / "dpbert-interrupted" / "model.safetensors"),
    )
    statistics = [name for name in a if "planner_norms" in name]
    assert statistics and all(torch.allclose(a[name], b[name], atol=1e-6) for name in statistics)


@pytest.mark.parametrize("method, thresholds", [("deebert", [0.0, 0.2, 0.5, 0.69]), ("pabee", [1.0, 2.0, 3.0])])
def test_one_pass_sweep_equals_separate_runs(make_model, glue_dir, method, thresholds):
    from tests.conftest import randomise
    from tests.test_engine import pabee_with_varied_agreement

    model = randomise(make_model(method), seed=5, scale=3.0)
    if method == "pabee":
        model = pabee_with_varied_agreement(model)
    assert model.method.sweeps_in_one_pass
    dev = load_split("MRPC", "dev", glue_dir)
    swept = sweep(model, dev, thresholds)
    for point, threshold in zip(swept, thresholds):
        single = evaluate(model, dev, threshold)
        for key in ("metric", "avg_layers", "top_path_share"):
            assert point[key] == pytest.approx(single[key]), key
        assert point["exit_frequency"] == pytest.approx(single["exit_frequency"])
    assert len({r["avg_layers"] for r in swept}) > 1


def trace_summary(model, dataset, threshold=None) -> dict:
    """An operating point counted from ``predict``'s traces.

    Labels mapped back to indices, layers read off the layer lists.
    """
    traces = model.predict(
        list(dataset["text"]),
        list(dataset["text_pair"]) if model.config.pair else None,
        threshold=threshold,
        batch_size=64,
    )
    predictions = [
        trace.prediction if model.config.labels is None else model.config.labels.index(trace.prediction)
        for trace in traces
    ]
    count, layers = len(traces), range(1, model.num_layers + 1)
    top_path, top_count = Counter(tuple(trace.layers_executed) for trace in traces).most_common(1)[0]
    return {
        "predictions": predictions,
        "metric": glue_metrics(model.config.task, predictions, list(dataset["label"]))[MAIN_METRIC[model.config.task]],
        "avg_layers": sum(len(trace.layers_executed) for trace in traces) / count,
        "layer_frequency": [sum(layer in trace.layers_executed for trace in traces) / count for layer in layers],
        "exit_frequency": [sum(trace.exit_layer == layer for trace in traces) / count for layer in layers],
        "top_path": list(top_path),
        "top_path_share": top_count / count,
    }


@pytest.mark.parametrize("method, task", [(method, "MRPC") for method in METHODS] + [("dpbert", "STS-B")])
def test_evaluation_of_the_engine_tensors_counts_what_the_traces_show(make_model, method, task):
    from tests.conftest import SECOND, SENTENCES
    from tests.test_engine import configured

    model, threshold = configured(lambda name, **settings: make_model(name, task, **settings), method)
    labels = (
        [0.5 * i for i in range(len(SENTENCES) * 3)]
        if model.config.labels is None
        else [i % 3 % 2 for i in range(len(SENTENCES) * 3)]
    )
    dataset = Dataset.from_dict({"text": SENTENCES * 3, "text_pair": SECOND * 3, "label": labels})
    result = evaluate(model, dataset, threshold, with_predictions=True)
    expected = trace_summary(model, dataset, threshold)
    if not model.method.exits_early:
        assert "exit_frequency" not in result and not any(expected.pop("exit_frequency"))
    assert {key: result[key] for key in expected} == expected
    if method != "full":
        assert expected["top_path_share"] < 1, "the inputs should take different paths"


def test_calibration_takes_the_fastest_point_that_keeps_the_metric_or_the_best_reaching_a_speedup():
    def point(metric, speedup, threshold, no_layer=0.0):
        return {
            "task": "SST-2",
            "metric_name": "accuracy",
            "accuracy": metric,
            "expected_speedup": speedup,
            "threshold": threshold,
            "no_layer_share": no_layer,
        }

    results = [point(0.90, 1.0, 0.0), point(0.89, 1.5, 0.2), point(0.86, 1.8, 0.3), point(0.80, 2.5, 0.4)]
    reference, better = {"accuracy": 0.90}, {"accuracy": 0.99}
    assert choose(results, reference, Goal(keep=0.98))["threshold"] == 0.2
    assert choose(results, reference, Goal(keep=0.95))["threshold"] == 0.3
    assert choose(results, better, Goal(keep=0.98))["threshold"] == 0.0  # nothing keeps 98%: the most accurate
    assert (
        choose(results, reference, Goal(target_speedup=1.6))["threshold"] == 0.3
    )  # the most accurate of those reaching 1.6x
    assert choose(results, reference, Goal(target_speedup=3.0))["threshold"] == 0.4  # none reaches it: the fastest
    shortcut = [
        *results,
        point(0.90, 4.0, 0.5, no_layer=0.4),
    ]  # keeps the metric by answering 40 % with no layer at all
    assert choose(shortcut, reference, Goal(keep=0.98))["threshold"] == 0.2, (
        "a majority-answer shortcut is not an operating point"
    )


def test_mrpc_keeps_its_full_model_only_when_accuracy_and_f1_both_do():
    """F1 alone would let a model that answers "equivalent" for everything keep 94 % of the full model."""
    reference = {"accuracy": 0.80, "f1": 0.86}
    majority = {"task": "MRPC", "metric_name": "f1", "metric": 0.812, "accuracy": 0.684, "f1": 0.812}
    assert share_of_full("MRPC", majority, reference) == pytest.approx(0.684 / 0.80)
    assert share_of_full("SST-2", {"metric_name": "accuracy", "accuracy": 0.88}, {"accuracy": 0.90}) == pytest.approx(
        0.88 / 0.90
    )
    results = [majority | {"expected_speedup": 6.0, "threshold": 0.9, "no_layer_share": 0.0}]
    results.append(
        {
            "task": "MRPC",
            "metric_name": "f1",
            "accuracy": 0.79,
            "f1": 0.85,
            "expected_speedup": 1.5,
            "threshold": 0.2,
            "no_layer_share": 0.0,
        }
    )
    assert choose(results, reference, Goal(keep=0.98))["threshold"] == 0.2


def test_command_line_refuses_settings_the_method_does_not_have(glue_dir, tiny_backbone, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        train_module.parse_args(["--method", "deebert", "--task", "MRPC", "--tau", "0.1"])
    assert stopped.value.code == 2 and "--tau" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_module.parse_args(["--method", "dpbert", "--task", "MRPC", "--first-layer", "sideways"])
    args = train_module.parse_args(
        ["--method", "dpbert", "--task", "MRPC", "--target-skip-rate", "0.3", "--reward-loss-weight", "20"]
    )
    assert train_module.method_settings(args) == {"target_skip_rate": 0.3, "reward_loss_weight": 20.0}


def test_method_configs_refuse_unknown_keys_and_out_of_range_values():
    with pytest.raises(UserError, match="unknown setting"):
        METHODS["dact"].Config.from_dict({"tau": 0.1, "taw": 0.2})
    with pytest.raises(UserError, match="out of range"):
        METHODS["dpbert"].Config.from_dict({"target_skip_rate": 1.5})
    assert METHODS["dpbert"].Config().target_skip_rate == 0.4 and METHODS["dpbert"].Config().reward_loss_weight in (
        5.0,
        20.0,
        35.0,
        50.0,
    )


def test_validation_rows_are_held_out_of_training_and_always_the_same(glue_dir):
    fit, validation = load_split("MRPC", "fit", glue_dir), load_split("MRPC", "validation", glue_dir)
    whole = load_split("MRPC", "train", glue_dir)
    assert len(fit) + len(validation) == len(whole) and len(validation) == 2
    assert list(load_split("MRPC", "validation", glue_dir)["text"]) == list(validation["text"])
    pairs = lambda rows: sorted(zip(rows["text"], rows["text_pair"], rows["label"]))  # noqa: E731
    assert sorted(pairs(fit) + pairs(validation)) == pairs(whole)


def test_pabee_trains_encoder_and_every_off_ramp_on_the_weighted_average(stage_one, tiny_backbone):
    model = start("pabee", None, tiny_backbone, stage_one)
    changed = changed_after_one_step(model)
    assert any("lora_" in name for name in changed)
    assert {name.split(".")[2] for name in changed if name.startswith("method.ramps.")} == {
        str(i) for i in range(model.num_layers)
    }
    batch = batch_of(model)
    model.eval()
    from core.heads import task_loss
    from core.methods.base import TrainBatch, run_all_layers

    train_batch = TrainBatch(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"])
    loss, _ = model.method.training_loss(model.encoder, train_batch, model.method.stage(None))
    losses = [
        task_loss(ramp(cls), batch["labels"])
        for ramp, cls in zip(model.method.ramps, run_all_layers(model.encoder, train_batch, model.method.pooling))
    ]
    expected = sum((i + 1) * value for i, value in enumerate(losses)) / sum(range(1, len(losses) + 1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dpbert_hard_rate_penalty_pushes_planners_across_the_inference_threshold(stage_one, tiny_backbone):
    """With every planner at s = 0.6 (all layers run at threshold 0.5), the hard rate sees 100 % executed and pushes s
    down; the mean rate does not.
    """
    grads = {}
    for rule in ("hard", "mean"):
        model = start(
            "dpbert",
            "relaxed",
            tiny_backbone,
            stage_one,
            target_skip_rate=0.4,
            rate_penalty=rule,
            rate_weight=1.0,
            first_layer="planner",
        )
        with torch.no_grad():
            for planner in model.method.planners:
                planner.weight.zero_()
                planner.bias.fill_(0.4055)  # sigmoid = 0.6 = 1 - t
        model.train()
        batch = batch_of(model)
        loss, stats = model.method.training_loss(model.encoder, TrainBatch(**batch), model.method.stage("relaxed"))
        loss.backward()
        grads[rule] = sum(planner.bias.grad.item() for planner in model.method.planners)
        assert stats["execute_rate"] == pytest.approx(1.0 if rule == "hard" else 0.6, abs=1e-3)
    # the task loss pulls on the biases alike under both rules; only the hard rate adds a push towards bypassing
    assert grads["hard"] - grads["mean"] > 1e-3, "descending the hard-rate loss must lower the planner biases"


def test_dpbert_rate_multiplier_rises_while_the_rate_is_too_high_and_then_prices_it(stage_one, tiny_backbone):
    """Dual ascent: every step above 1 - t raises the multiplier, and a higher multiplier pushes the planner biases
    down harder.
    """
    model = start(
        "dpbert",
        "relaxed",
        tiny_backbone,
        stage_one,
        target_skip_rate=0.4,
        rate_weight=0.0,
        rate_multiplier_step=0.5,
        rate_bias_step=0.0,
        first_layer="planner",
    )
    with torch.no_grad():
        for planner in model.method.planners:
            planner.weight.zero_()
            planner.bias.fill_(3.0)  # s = 0.95: every layer runs, far above 1 - t = 0.6
    model.train()
    batch, stage = TrainBatch(**batch_of(model)), model.method.stage("relaxed")
    pushes = []
    for _ in range(3):
        for planner in model.method.planners:
            planner.bias.grad = None
        loss, stats = model.method.training_loss(model.encoder, batch, stage)
        loss.backward()
        pushes.append(sum(planner.bias.grad.item() for planner in model.method.planners))
    assert stats["rate_multiplier"] == pytest.approx(3 * 0.5 * 0.4, abs=1e-4), (
        "the multiplier grows by step * excess each step"
    )
    assert pushes[2] > pushes[1] > pushes[0], (
        "descending the loss lowers the biases ever more strongly while the rate stays too high"
    )
    assert "rate_multiplier" not in model.method.state_dict(), "training state, not part of a saved model"


@pytest.mark.parametrize("stage_name", ["relaxed", "rl"])
def test_dpbert_integral_rate_control_moves_the_planner_biases_by_step_times_excess(
    stage_one, tiny_backbone, stage_name
):
    """The biases move by -rate_bias_step * (rate - (1 - t)) per training step, whatever the optimiser's pace;
    layer 1's planner, which decides nothing when layer 1 always runs, stays; evaluation moves nothing.
    """
    model = start("dpbert", "relaxed", tiny_backbone, stage_one, target_skip_rate=0.4, rate_bias_step=0.25)
    with torch.no_grad():
        for planner in model.method.planners:
            planner.weight.zero_()
            planner.bias.fill_(3.0)  # the rule runs every layer: rate 1, excess 0.4
    batch, stage = TrainBatch(**batch_of(model)), model.method.stage(stage_name)
    model.train()
    loss, stats = model.method.training_loss(model.encoder, batch, stage)
    loss.backward()  # the shift happens beside the graph: backward still works
    assert stats["execute_rate"] == pytest.approx(1.0)
    biases = [planner.bias.item() for planner in model.method.planners]
    assert biases[0] == 3.0, "layer 1 always runs: its planner is not moved"
    assert biases[1:] == pytest.approx([3.0 - 0.25 * 0.4] * (model.num_layers - 1), abs=1e-6)
    model.eval()
    with torch.no_grad():
        model.method.training_loss(model.encoder, batch, stage)
    assert [planner.bias.item() for planner in model.method.planners] == pytest.approx(biases), "only training moves"


def test_dpbert_checkpoints_saved_before_integral_rate_control_record_it_as_off(stage_one, tiny_backbone, tmp_path):
    model = start("dpbert", "relaxed", tiny_backbone, stage_one)
    assert model.method.config.rate_bias_step > 0, "new runs control the rate by default"
    folder = save_checkpoint(model, tmp_path / "dpbert")
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["method_config"]["rate_bias_step"]
    config_file.write_text(json.dumps(saved))
    assert read_config(folder).method_config["rate_bias_step"] == 0.0
    assert load_checkpoint(folder).method.config.rate_bias_step == 0.0, "as it was trained: without it"


def test_publish_takes_each_dpbert_target_rate_trained_by_rl_as_a_candidate_but_no_relaxed_step_or_ablation(
    stage_one, tiny_backbone, tmp_path
):
    from training.publish import candidate_folders

    run = tmp_path / "mrpc"
    model = start("dpbert", "relaxed", tiny_backbone, stage_one)
    for name, stage in [
        ("dpbert", "rl"),
        ("dpbert-t0.5", "rl"),
        ("dpbert-relaxed", "relaxed"),
        ("dpbert-relaxed-t0.5", "relaxed"),
        ("dpbert-soft", "soft"),
    ]:
        model.config.training = {"stage": stage}
        save_checkpoint(model, run / name)
    assert [folder.name for folder in candidate_folders(run, "dpbert")] == ["dpbert", "dpbert-t0.5"]


def test_publish_ships_full_as_int8_delta_and_methods_beside_it_with_points_chosen_on_validation(
    glue_dir, tiny_backbone, tmp_path, monkeypatch
):
    """The whole ship path on a tiny model: train, publish into a temporary assets folder, load what was shipped."""
    from training import publish

    run = tmp_path / "runs" / "mrpc"
    run_training(glue_dir, tiny_backbone, run / "full", "--method", "full", "--finetune", "full", "--max-steps", "2")
    run_training(
        glue_dir,
        tiny_backbone,
        run / "deebert",
        "--method",
        "deebert",
        "--init",
        str(run / "full"),
        "--max-steps",
        "1",
    )
    for tau in ("0.01", "0.1"):
        run_training(
            glue_dir,
            tiny_backbone,
            run / f"dact-tau{tau}",
            "--method",
            "dact",
            "--init",
            str(run / "full"),
            "--max-steps",
            "1",
            "--tau",
            tau,
        )
    intermediate = tmp_path / "runs" / "intermediate" / "full"  # trained on dev rows: never published
    run_training(
        glue_dir,
        tiny_backbone,
        intermediate,
        "--method",
        "full",
        "--finetune",
        "full",
        "--max-steps",
        "1",
        "--train-split",
        "dev",
    )
    shipped = tmp_path / "assets" / "checkpoints"
    monkeypatch.setattr(publish, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(publish, "RESULTS_DIR", tmp_path / "assets" / "results")
    assert publish.main(["--runs", str(tmp_path / "runs"), "--data-dir", str(glue_dir)]) == 0
    assert sorted(path.name for path in (shipped / "mrpc").iterdir()) == ["dact", "deebert", "full"]
    assert not (shipped / "intermediate").exists()
    full = read_config(shipped / "mrpc" / "full")
    assert full.encoder_weights == "delta" and list((shipped / "mrpc" / "full").glob("encoder-*.safetensors"))
    for method in ("deebert", "dact"):
        config = read_config(shipped / "mrpc" / method)
        assert config.base_checkpoint == "../full"
        assert (
            config.operating_point["chosen_on"] == "validation"
            and config.operating_point["validation_split"]["rows"] == 2
        )
        assert config.metrics["examples"] == len(ROWS), "the recorded metrics are the dev set's"
        load_checkpoint(shipped / "mrpc" / method).predict("a", "b")
    for method in ("full", "deebert", "dact"):  # what --precision fastest reads
        checks = read_config(shipped / "mrpc" / method).operating_point["precisions"]
        assert set(checks) == {"int8", "onnx-fp32", "onnx-int8"}
        assert all(0 <= check["agreement"] <= 1 and isinstance(check["keeps"], bool) for check in checks.values())
    assert read_config(shipped / "mrpc" / "deebert").threshold is not None
    table = (shipped / "README.md").read_text()
    tau = read_config(shipped / "mrpc" / "dact").method_config["tau"]
    pooling = read_config(shipped / "mrpc" / "dact").method_config["pooling"]
    assert f"| MRPC | dact | {pooling} | tau={tau:g} |" in table, "DACT's operating point is its trained tau"
    rows = {row.split(" | ")[1]: row for row in table.splitlines() if row.startswith("| MRPC |")}
    assert all(
        ("met" in rows[method]) or ("x (-" in rows[method]) or ("one path" in rows[method]) or ("pt)" in rows[method])
        for method in ("deebert", "dact")
    )
    assert all(row.count(" | ") == table.splitlines()[10].count(" | ") for row in rows.values()), (
        "every row fills every column"
    )

    # one method again: the others and the full model stay as shipped, the table still lists them all
    dact_config, full_weights = (
        (shipped / "mrpc" / "dact" / "config.json").read_text(),
        (shipped / "mrpc" / "full" / "model.safetensors").read_bytes(),
    )
    shutil.rmtree(shipped / "mrpc" / "deebert")
    (shipped / "mrpc" / "full" / "model.safetensors").touch()
    stamp = (shipped / "mrpc" / "full" / "model.safetensors").stat().st_mtime_ns
    assert publish.main(["--runs", str(tmp_path / "runs"), "--data-dir", str(glue_dir), "--methods", "deebert"]) == 0
    assert (shipped / "mrpc" / "deebert" / "config.json").is_file() and (
        shipped / "mrpc" / "dact" / "config.json"
    ).read_text() == dact_config
    full_file = shipped / "mrpc" / "full" / "model.safetensors"
    assert full_file.stat().st_mtime_ns == stamp and full_file.read_bytes() == full_weights, (
        "the full model is not re-shipped"
    )
    assert "| MRPC | dact |" in (shipped / "README.md").read_text()


def test_target_misses_say_by_how_much():
    from training.targets import AdaptivityFigures, target_misses

    assert target_misses(AdaptivityFigures(0.99, 1.6, 0.5, 0.0)) == []
    assert target_misses(AdaptivityFigures(0.97, 1.2, 0.88, 0.57)) == [
        "keeps 97.0% (-1.0 pt)",
        "1.20x (-0.30x)",
        "one path 88% (+18%)",
        "no layer for 57% (+52%)",
    ]
    assert target_misses(AdaptivityFigures(None, 2.0, 0.5, 0.0)) == ["keeps n/a"], (
        "no usable reference is a miss, not a pass"
    )


def test_dpbert_greedy_baseline_rewards_only_what_differs_from_the_inference_path(stage_one, tiny_backbone):
    """Self-critical baseline: where every sampled action equals the inference rule's there is no policy signal.

    Where they differ there is.
    """
    model = start(
        "dpbert", "soft", tiny_backbone, stage_one, rl_baseline="greedy", first_layer="mean"
    )  # a model to call the rl loss on
    with torch.no_grad():
        for planner in model.method.planners:
            planner.weight.zero_()
            planner.bias.fill_(5.0)  # s = 0.993: the rule runs every layer, and so (with this seed) does every sample
    model.eval()  # no dropout, so equal paths give equal losses
    torch.manual_seed(0)
    loss, stats = model.method.training_loss(model.encoder, TrainBatch(**batch_of(model)), model.method.stage("rl"))
    assert stats["sampled_execute_rate"] == 1.0 and stats["policy"] == 0.0
    model = start(
        "dpbert", "soft", tiny_backbone, stage_one, rl_baseline="greedy"
    )  # s = 0.73 at the default bias: some samples skip
    model.train()
    torch.manual_seed(1)
    loss, stats = model.method.training_loss(model.encoder, TrainBatch(**batch_of(model)), model.method.stage("rl"))
    loss.backward()
    assert stats["sampled_execute_rate"] < 1.0 and any(
        planner.bias.grad.abs().item() > 0
        for planner in model.method.planners[1:]  # layer 1 always runs
    )


def test_dpbert_soft_gate_ablation_trains_backbone_and_planners_without_sampling(stage_one, tiny_backbone):
    model = start("dpbert", "soft", tiny_backbone, stage_one)
    torch.manual_seed(0)
    first, _ = TrainingObjective(model, model.method.stage("soft")).eval()(**batch_of(model))
    torch.manual_seed(1)
    second, _ = TrainingObjective(model, model.method.stage("soft")).eval()(**batch_of(model))
    assert first.item() == pytest.approx(second.item()), "no sampled actions: the same batch gives the same loss"
    changed = changed_after_one_step(model, "soft")
    assert any(name.startswith("method.planners.") for name in changed) and any("lora_" in name for name in changed)


def test_tradeoff_labels_checkpoints_by_a_config_field_and_scores_each_layer(make_model, glue_dir, tmp_path, capsys):
    from training import tradeoff

    folders = []
    for tau in (0.01, 0.3):
        model = make_model("dact", tau=tau)
        model.config.trained = True
        folders.append(str(save_checkpoint(model, tmp_path / f"dact-{tau}")))
    out = tmp_path / "tau"
    assert (
        tradeoff.main(["--checkpoints", *folders, "--label-by", "tau", "--data-dir", str(glue_dir), "--out", str(out)])
        == 0
    )
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].split(",")[1] == "0.01" and (out / "chart.png").stat().st_size > 0
    assert (
        tradeoff.main(
            ["--checkpoints", folders[0], "--label-by", "taw", "--data-dir", str(glue_dir), "--out", str(out)]
        )
        == 2
    )
    layers = tmp_path / "layers"
    assert (
        tradeoff.main(["--checkpoints", folders[0], "--per-layer", "--data-dir", str(glue_dir), "--out", str(layers)])
        == 0
    )
    per_layer = (layers / "results.csv").read_text().splitlines()
    assert len(per_layer) == 1 + make_model("dact").num_layers


def test_dpbert_standardized_planners_see_only_what_differs_between_inputs(stage_one, tiny_backbone, tmp_path):
    """A planner weight along the inputs' shared direction gives every input the same decision on raw states, different
    ones when standardized.
    """
    decisions = {}
    for planner_input in ("raw", "standardized"):
        model = start("dpbert", "relaxed", tiny_backbone, stage_one, planner_input=planner_input)
        torch.manual_seed(0)
        shared = 3 * torch.randn(model.encoder.hidden_size)
        hidden = shared + 0.05 * torch.randn(
            8, 5, model.encoder.hidden_size
        )  # [CLS] states: a large common part, small differences
        with torch.no_grad():
            model.method.planners[1].weight.copy_(1e-2 * shared.unsqueeze(0))
            model.method.planners[1].bias.zero_()
        model.train()
        decisions[planner_input] = model.method.planner_logit(1, hidden[:, 0]).detach()
    assert decisions["raw"].std() < 0.1 * decisions["raw"].abs().mean()
    assert decisions["standardized"].mean().abs() < 1e-4 and decisions["standardized"].std() > 1e-3, (
        "standardized: centred, and only the differences remain"
    )


def test_dpbert_standardized_planners_keep_their_statistics_and_accept_a_one_row_batch(
    stage_one, tiny_backbone, tmp_path
):
    model = start("dpbert", "relaxed", tiny_backbone, stage_one, planner_input="standardized")
    model.train()
    stage = model.method.stage("relaxed")
    TrainingObjective(model, stage).train()(**batch_of(model))
    running = model.method.planner_norms[1].mean.clone()
    assert running.abs().sum() > 0, "training batches update the running statistics"
    norm, states = model.method.planner_norms[2], torch.randn(8, model.encoder.hidden_size) * 4 + 1
    in_training = norm(states)
    assert torch.allclose(norm.eval()(states), in_training), (
        "training normalises with the running statistics inference uses"
    )
    norm.train()
    one_row = batch_of(model, ROWS[:1])
    loss, _ = TrainingObjective(model, stage).train()(**one_row)
    assert torch.isfinite(loss) and torch.equal(model.method.planner_norms[1].mean, running), (
        "a one-row batch uses, and keeps, the running statistics"
    )
    with torch.no_grad():  # weights that read the standardised state, so the statistics matter
        for planner in model.method.planners:
            planner.weight.normal_()
    model.config.trained = True
    before = model.predict(
        [a for a, _, _ in ROWS[:4]], [b for _, b, _ in ROWS[:4]], early_exit=False, layer_values=True
    )
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "dpbert"))
    assert loaded.method.config.planner_input == "standardized"
    assert torch.equal(loaded.method.planner_norms[3].var, model.method.planner_norms[3].var)
    after = loaded.predict(
        [a for a, _, _ in ROWS[:4]], [b for _, b, _ in ROWS[:4]], early_exit=False, layer_values=True
    )
    probabilities = [
        [step.values["planner_prob"] for t in traces for step in t.per_layer] for traces in (before, after)
    ]
    assert len(set(probabilities[0])) > 1 and probabilities[1] == pytest.approx(probabilities[0], abs=1e-6)


def test_dpbert_rl_rate_penalty_measures_the_inference_rule_path(stage_one, tiny_backbone):
    """The penalised rate is the one the rule s > 0.5 has at inference (its own path), not the rate the rule would have
    on sampled paths.
    """
    model = start(
        "dpbert", "soft", tiny_backbone, stage_one, rate_penalty="hard", target_skip_rate=0.4, first_layer="mean"
    )
    model.eval()  # no dropout: the inference path of predict is the rule path of the loss
    rows = ROWS[:6]
    batch = batch_of(model, rows)
    with torch.no_grad():  # layer 1's planner is unsure for some rows; layer 2's runs exactly when layer 1 ran
        embedded = model.encoder.embed(batch["input_ids"], batch["token_type_ids"])
        after_first = model.encoder.run_layer(
            0, embedded, model.encoder.attention_mask_for(embedded, batch["attention_mask"])
        )
        torch.manual_seed(3)
        first, second, *rest = model.method.planners
        first.weight.normal_(0, 3.0)
        first.bias.zero_()
        direction = (after_first[:, 0] - embedded[:, 0]).mean(0)
        second.weight.copy_(50 * direction.unsqueeze(0))
        second.bias.fill_(-(50 * direction * (after_first[:, 0] + embedded[:, 0]).mean(0) / 2).sum())
        for planner in rest:
            planner.weight.zero_()
            planner.bias.fill_(5.0)
    traces = model.predict([a for a, _, _ in rows], [b for _, b, _ in rows], batch_size=len(rows))
    assert all((1 in trace.layers_executed) == (2 in trace.layers_executed) for trace in traces)
    inference_rate = sum(len(trace.layers_executed) for trace in traces) / (len(rows) * model.num_layers)
    sampled = set()
    for seed in range(6):
        torch.manual_seed(seed)
        _, stats = model.method.training_loss(model.encoder, TrainBatch(**batch), model.method.stage("rl"))
        assert stats["execute_rate"] == pytest.approx(inference_rate)
        sampled.add(stats["sampled_execute_rate"])
    assert len(sampled) > 1, "the samples vary; the penalised rate does not"


def test_equal_layers_interpolates_the_other_sweeps_and_never_extrapolates():
    from training.tradeoff import at_equal_layers

    rows = [
        {"checkpoint": "rl", "threshold": 0.5, "metric": 0.80, "avg_layers": 3.0},
        {"checkpoint": "rl", "threshold": 0.3, "metric": 0.85, "avg_layers": 5.0},
        {"checkpoint": "soft", "threshold": 0.5, "metric": 0.70, "avg_layers": 2.0},
        {"checkpoint": "soft", "threshold": 0.3, "metric": 0.78, "avg_layers": 4.0},
    ]
    table = at_equal_layers(rows)
    assert [row["avg_layers"] for row in table] == [3.0, 5.0]
    assert table[0]["rl"] == 0.80 and table[0]["soft"] == pytest.approx(0.74)
    assert table[1]["soft"] is None, "5 layers lies outside the soft sweep's 2-4"


def test_a_sweep_table_shows_every_compared_metric_and_the_no_layer_share(tmp_path):
    from training.evaluate import write_sweep

    point = {
        "task": "MRPC",
        "method": "dpbert",
        "metric_name": "f1",
        "metric": 0.83,
        "accuracy": 0.74,
        "f1": 0.83,
        "avg_layers": 3.7,
        "expected_speedup": 6 / 3.7,
        "top_path_share": 0.3,
        "no_layer_share": 0.11,
        "layer_frequency": [1.0, 0.5, 0.5, 0.5, 0.5, 0.5],
        "exit_frequency": None,
    }
    write_sweep([point | {"threshold": 0.5}, point | {"threshold": 0.6, "accuracy": 0.70}], tmp_path / "sweep")
    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert list(table.columns[:7]) == ["task", "method", "threshold", "metric_name", "metric", "accuracy", "f1"]
    assert table["accuracy"].tolist() == [0.74, 0.70] and table["no_layer_share"].tolist() == [0.11, 0.11]


def test_probe_scores_every_layer_both_ways_and_adds_a_checkpoint_to_an_earlier_table(
    glue_dir, tiny_backbone, tmp_path, capsys
):
    from training import probe

    run_training(
        glue_dir, tiny_backbone, tmp_path / "full", "--method", "full", "--finetune", "full", "--max-steps", "1"
    )
    out = tmp_path / "probe"
    common = ["--task", "MRPC", "--data-dir", str(glue_dir), "--out", str(out)]
    assert probe.main([*common, "--backbone", "--backbone-name", tiny_backbone]) == 0
    backbone_rows = pd.read_csv(out / "results.csv")
    layers = load_checkpoint(tmp_path / "full").encoder.num_layers
    assert set(backbone_rows["model"]) == {"backbone"} and len(backbone_rows) == 2 * (layers + 1), (
        "both poolings, after the embeddings and after every layer"
    )
    assert backbone_rows["metric"].between(0, 1).all()
    for _ in range(2):  # probing the same checkpoint again replaces its rows
        assert probe.main([*common, "--checkpoints", str(tmp_path / "full"), "--add"]) == 0
        both = pd.read_csv(out / "results.csv")
        assert len(both) == 2 * len(backbone_rows) and both["model"].nunique() == 2
        pd.testing.assert_frame_equal(both[both["model"] == "backbone"].reset_index(drop=True), backbone_rows)
    assert probe.main([*common, "--checkpoints", str(tmp_path / "full")]) == 0
    assert "backbone" not in set(pd.read_csv(out / "results.csv")["model"]), "without --add the table starts again"
    missing = ["--task", "MRPC", "--data-dir", str(glue_dir), "--out", str(tmp_path / "nowhere")]
    assert probe.main([*missing, "--checkpoints", str(tmp_path / "full"), "--add"]) == 2
    assert "does not exist: leave out --add" in capsys.readouterr().err

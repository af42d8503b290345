"""Training: data quirks, metrics, what each recipe updates, resuming, and evaluation of a saved model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.checkpoint import add_lora, load_checkpoint, save_checkpoint
from core.errors import UserError
from training import train as train_module
from training.data import DEFAULT_DATA_DIR, load_split
from training.evaluate import choose_default, evaluate, sweep
from training.metrics import glue_metrics
from training.recipes import TrainingObjective, starting_model, trainable_parameters

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
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [f"{label}\t1\t2\t{a}\t{b}" for a, b, label in ROWS]
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
@pytest.mark.parametrize("task, split, rows", [("MRPC", "train", 3668), ("RTE", "dev", 277), ("STS-B", "dev", 1500), ("CoLA", "train", 8551), ("QNLI", "dev", 5463), ("SST-2", "dev", 872)])
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


def changed_after_one_step(model, method: str, stage: str, options: dict) -> set[str]:
    torch.manual_seed(0)
    parameters = trainable_parameters(model, method, stage)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    objective = TrainingObjective(model, options).train()
    optimizer = torch.optim.SGD(parameters, lr=1.0)
    for _ in range(2):  # two steps: LoRA's B starts at zero, so A moves only from the second step on
        loss, _ = objective(**batch_of(model))
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}


def test_stage_one_trains_adapters_and_head_only(make_model, tiny_backbone):
    model = starting_model("full", "MRPC", tiny_backbone, None, "lora", 4, {})
    changed = changed_after_one_step(model, "full", "joint", {})
    assert any("lora_" in name for name in changed) and any(name.startswith("method.head") for name in changed)
    assert all("lora_" in name or name.startswith("method.") for name in changed)


def test_deebert_stage_two_touches_only_the_early_off_ramps(stage_one, tiny_backbone):
    model = starting_model("deebert", "MRPC", tiny_backbone, stage_one, "lora", 4, {})
    changed = changed_after_one_step(model, "deebert", "joint", {})
    last = f"method.ramps.{model.num_layers - 1}."
    assert changed and all(name.startswith("method.ramps.") and not name.startswith(last) for name in changed)
    assert {name.split(".")[2] for name in changed} == {str(i) for i in range(model.num_layers - 1)}


def test_dact_trains_encoder_and_halting_jointly(stage_one, tiny_backbone):
    model = starting_model("dact", "MRPC", tiny_backbone, stage_one, "lora", 4, {})
    changed = changed_after_one_step(model, "dact", "joint", {"tau": 0.1})
    assert any("lora_" in name for name in changed)
    assert any(name.startswith("method.halting.") for name in changed) and any(name.startswith("method.classifiers.") for name in changed)


def test_dpbert_relaxed_stage_leaves_the_backbone_untouched(stage_one, tiny_backbone):
    model = starting_model("dpbert", "MRPC", tiny_backbone, stage_one, "lora", 4, {})
    changed = changed_after_one_step(model, "dpbert", "relaxed", {"mode": "relaxed", "target_skip_rate": 0.5})
    assert any(name.startswith("method.planners.") for name in changed)
    assert not any(name.startswith("encoder.") for name in changed)


def test_dpbert_rl_stage_changes_planners_and_backbone(stage_one, tiny_backbone):
    model = starting_model("dpbert", "MRPC", tiny_backbone, stage_one, "lora", 4, {})
    changed = changed_after_one_step(model, "dpbert", "rl", {"mode": "rl", "target_skip_rate": 0.5})
    assert any(name.startswith("method.planners.") for name in changed)
    assert any("lora_" in name for name in changed)


def run_training(glue_dir, backbone, out, *extra) -> dict:
    args = ["--task", "MRPC", "--data-dir", str(glue_dir), "--backbone", backbone, "--out", str(out), "--batch-size", "4",
            "--no-bf16", "--quiet", "--lora-rank", "4", *extra]
    assert train_module.main(args) == 0
    return json.loads((Path(out) / "config.json").read_text())


def test_every_recipe_runs_from_the_command_line_and_saves_an_evaluable_checkpoint(glue_dir, tiny_backbone, tmp_path):
    config = run_training(glue_dir, tiny_backbone, tmp_path / "full", "--method", "full", "--max-steps", "2")
    assert config["trained"] and config["training"]["steps"] == 2 and config["metrics"]["metric_name"] == "f1"
    for method, extra in [("deebert", []), ("dact", ["--tau", "0.01"]), ("dpbert", ["--stage", "relaxed"])]:
        config = run_training(glue_dir, tiny_backbone, tmp_path / method, "--method", method, "--init", str(tmp_path / "full"), "--max-steps", "1", *extra)
        assert config["method"] == method
    config = run_training(glue_dir, tiny_backbone, tmp_path / "rl", "--method", "dpbert", "--stage", "rl", "--init", str(tmp_path / "dpbert"), "--max-steps", "1")
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
    run_training(glue_dir, tiny_backbone, interrupted, "--method", "full", "--max-steps", "6", "--save-every", "3", "--resume")
    a, b = load_file(straight / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_deebert_one_pass_sweep_equals_separate_runs(make_model, glue_dir):
    from tests.conftest import randomise

    model = randomise(make_model("deebert"), seed=5, scale=3.0)
    dev = load_split("MRPC", "dev", glue_dir)
    thresholds = [0.0, 0.2, 0.5, 0.69]
    for swept, threshold in zip(sweep(model, dev, thresholds), thresholds):
        single = evaluate(model, dev, threshold)
        assert swept["metric"] == pytest.approx(single["metric"]) and swept["avg_layers"] == pytest.approx(single["avg_layers"])
    assert len({r["avg_layers"] for r in sweep(model, dev, thresholds)}) > 1


def test_choose_default_takes_the_fastest_point_that_keeps_the_metric():
    results = [{"metric": 0.90, "expected_speedup": 1.0, "threshold": 0.0}, {"metric": 0.89, "expected_speedup": 1.5, "threshold": 0.2}, {"metric": 0.80, "expected_speedup": 2.5, "threshold": 0.4}]
    assert choose_default(results, 0.90, 0.98)["threshold"] == 0.2
    assert choose_default(results, 0.99, 0.98)["threshold"] == 0.0  # nothing keeps 98%: the most accurate

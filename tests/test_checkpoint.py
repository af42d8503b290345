"""Save/load round trips for every method and encoder format, and clear errors for bad folders."""
from __future__ import annotations

import json

import pytest
import torch

from core.checkpoint import WEIGHTS_FILE, add_lora, load_checkpoint, save_checkpoint
from core.errors import UserError
from tests.conftest import SECOND, SENTENCES, randomise


def perturb_encoder(model) -> None:
    """Change the encoder so a checkpoint that forgot its encoder weights would give other outputs."""
    with torch.no_grad():
        for name, parameter in model.encoder.named_parameters():
            if parameter.requires_grad and ("lora_B" in name or "lora_" not in name):
                parameter.add_(torch.randn_like(parameter) * 0.05)


@pytest.mark.parametrize("method", ["full", "deebert", "dact", "dpbert"])
@pytest.mark.parametrize("encoder_weights", ["base", "lora", "full"])
def test_round_trip_gives_identical_traces(make_model, tmp_path, method, encoder_weights):
    model = randomise(make_model(method), seed=7)
    model.config.encoder_weights = encoder_weights
    if encoder_weights == "lora":
        model.config.lora = add_lora(model.encoder, rank=4, alpha=8)
    if encoder_weights != "base":
        perturb_encoder(model)
    model.config.threshold = 0.3 if method in ("deebert", "dpbert") else None
    model.eval()
    before = model.predict(SENTENCES, SECOND)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    after = loaded.predict(SENTENCES, SECOND)
    for a, b in zip(before, after):
        assert a.prediction == b.prediction
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
        assert a.layers_executed == b.layers_executed
        assert b.threshold == model.config.threshold or model.config.threshold is None


def test_lora_checkpoint_holds_only_adapters_and_heads(make_model, tmp_path):
    from safetensors.torch import load_file

    model = make_model("dpbert")
    model.config.encoder_weights = "lora"
    model.config.lora = add_lora(model.encoder, rank=4, alpha=8)
    save_checkpoint(model, tmp_path)
    names = load_file(tmp_path / WEIGHTS_FILE).keys()
    encoder_names = [name for name in names if name.startswith("encoder.")]
    assert encoder_names and all("lora_" in name for name in encoder_names)
    assert not any("embeddings" in name for name in names)


@pytest.fixture
def saved(make_model, tmp_path):
    save_checkpoint(make_model("deebert"), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_missing_weights_names_the_file(saved):
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(UserError, match=r"model\.safetensors is missing"):
        load_checkpoint(saved)


def test_truncated_weights_are_reported_as_damaged(saved):
    path = saved / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=r"model\.safetensors is damaged"):
        load_checkpoint(saved)


def test_pickled_weights_are_refused(saved):
    torch.save({"a": torch.zeros(1)}, saved / WEIGHTS_FILE)  # a pickle in disguise
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(saved)


def test_broken_config_json_is_reported(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config\.json is damaged"):
        load_checkpoint(saved)


def test_weights_that_do_not_fit_the_config_are_reported(saved):
    config = json.loads((saved / "config.json").read_text())
    config["method"] = "dact"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not fit its config"):
        load_checkpoint(saved)

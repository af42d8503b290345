"""Save/load round trips for every method and encoder format, and clear errors for bad folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from core.backbone import load_bert
from core.checkpoint import (
    SHIPPED_DIR,
    WEIGHTS_FILE,
    load_checkpoint,
    read_config,
    save_checkpoint,
    write_operating_point,
)
from core.errors import UserError
from core.lora import add_lora, plain_state_dict
from core.methods import METHODS
from tests.conftest import SECOND, SENTENCES, randomise


def perturb_encoder(model) -> None:
    """Change the encoder so a checkpoint that forgot its encoder weights would give other outputs."""
    with torch.no_grad():
        for name, parameter in model.encoder.named_parameters():
            if parameter.requires_grad and ("lora_B" in name or "lora_" not in name):
                parameter.add_(torch.randn_like(parameter) * 0.05)


@pytest.mark.parametrize("method", list(METHODS))
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


def test_config_of_an_older_layout_is_refused_in_one_line_saying_what_to_do(saved):
    """A config.json from before typed method configs (method_hyperparameters) names the key and how to get a loadable
    checkpoint.
    """
    path = saved / "config.json"
    data = json.loads(path.read_text())
    data["method_hyperparameters"] = data.pop("method_config")
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"method_hyperparameters.*re-create the checkpoint") as caught:
        load_checkpoint(saved)
    assert "\n" not in str(caught.value)


def test_shipped_checkpoints_hold_exactly_what_their_files_spell_out():
    """The shipped MRPC full model is the backbone plus int8 differences times their row scales.

    DACT on it adds alpha/rank * B @ A.
    """
    full_folder, dact_folder = SHIPPED_DIR / "mrpc" / "full", SHIPPED_DIR / "mrpc" / "dact"
    full, dact = load_checkpoint(full_folder), load_checkpoint(dact_folder)
    stored = {
        name: value
        for path in sorted(full_folder.glob("encoder-*.safetensors"))
        for name, value in load_file(path).items()
    }
    expected = load_bert(full.config.backbone).state_dict()
    for name, value in stored.items():
        if name.endswith(".int8"):
            weight = name[len("delta.") : -len(".int8")]
            expected[weight] = expected[weight] + value.float() * stored[f"delta.{weight}.scale"][:, None]
        elif name.startswith("encoder."):
            expected[name[len("encoder.") :]] = value
    full_weights = full.encoder.bert.state_dict()
    assert stored and full_weights.keys() == expected.keys()
    assert [name for name in expected if not torch.equal(full_weights[name], expected[name])] == []

    adapters = load_file(dact_folder / WEIGHTS_FILE)
    scaling = dact.config.lora["alpha"] / dact.config.lora["rank"]
    for name, value in adapters.items():
        if name.endswith(".lora_A.weight"):
            weight = name[len("encoder.") : -len(".lora_A.weight")] + ".weight"
            expected[weight] = full_weights[weight] + scaling * adapters[name.replace("lora_A", "lora_B")] @ value
    dact_weights = plain_state_dict(dact.encoder.bert)
    assert dact_weights.keys() == expected.keys() and any(
        not torch.equal(expected[name], full_weights[name]) for name in expected
    )
    assert [name for name in expected if not torch.allclose(dact_weights[name], expected[name], atol=1e-6)] == []
    heads = {name[len("method.") :]: value for name, value in adapters.items() if name.startswith("method.")}
    assert heads and all(torch.equal(dact.method.state_dict()[name], value) for name, value in heads.items())


def test_unknown_method_setting_in_config_is_refused(saved):
    path = saved / "config.json"
    data = json.loads(path.read_text())
    data["method_config"]["patience_of_a_saint"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="patience_of_a_saint"):
        load_checkpoint(saved)


def test_operating_point_has_one_writer(saved):
    config = write_operating_point(saved, 0.25, {"metric": 0.8}, {"chosen_on": "validation", "rule": "test"})
    again = read_config(saved)
    assert (
        again.threshold == 0.25
        and again.metrics == {"metric": 0.8}
        and again.operating_point["chosen_on"] == "validation"
    )
    assert config == again


def fully_tuned(make_model, method: str = "full"):
    """A model whose every encoder weight moved away from the backbone, as full fine-tuning does."""
    model = randomise(make_model(method), seed=3)
    model.config.encoder_weights = "full"
    with torch.no_grad():
        for name, parameter in model.encoder.named_parameters():
            if "embeddings" not in name:
                parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def test_delta_checkpoint_rebuilds_a_fully_tuned_encoder_from_int8_differences(make_model, tmp_path):
    from core.delta import SHARD_BYTES

    model = fully_tuned(make_model)
    expected = model.predict(SENTENCES, SECOND)
    model.config.encoder_weights = "delta"
    folder = save_checkpoint(model, tmp_path / "delta")
    shards = sorted(folder.glob("encoder-*.safetensors"))
    assert shards and all(path.stat().st_size <= SHARD_BYTES + 2**16 for path in shards)
    assert not any(name.startswith("encoder.") for name in load_file(folder / WEIGHTS_FILE)), (
        "the encoder lives in the shards"
    )
    got = load_checkpoint(folder).predict(SENTENCES, SECOND)
    for a, b in zip(expected, got):
        assert a.prediction == b.prediction
        assert a.probabilities == pytest.approx(b.probabilities, abs=2e-3)
    untouched = load_checkpoint(folder)
    untouched_state = untouched.encoder.bert.state_dict()
    for name, value in model.encoder.bert.state_dict().items():
        assert torch.allclose(untouched_state[name], value, atol=1e-3), name


@pytest.mark.parametrize("method", ["deebert", "dact"])
def test_methods_share_their_tasks_full_model_instead_of_copying_it(make_model, tmp_path, method):
    """DeeBERT (encoder frozen) stores no encoder weight, DACT (encoder trained) only LoRA adapters.

    Both point at ../full.
    """
    import shutil

    from training.stages import starting_model

    full = fully_tuned(make_model)
    full.config.trained = True
    save_checkpoint(full, tmp_path / "run" / "full")
    stage = METHODS[method].stage(None)
    model = starting_model(method, "MRPC", stage, {}, full.config.backbone, str(tmp_path / "run" / "full"), "lora", 4)
    model = randomise(model, seed=9)
    if method == "dact":
        with torch.no_grad():
            for name, parameter in model.encoder.named_parameters():
                if "lora_B" in name:
                    parameter.add_(torch.randn_like(parameter) * 0.05)
    folder = save_checkpoint(model, tmp_path / "run" / method)
    config = read_config(folder)
    assert config.base_checkpoint == "../full"
    stored = load_file(folder / WEIGHTS_FILE)
    encoder_keys = [name for name in stored if name.startswith("encoder.")]
    assert all("lora_" in name for name in encoder_keys) and (bool(encoder_keys) == (method == "dact"))
    from core.lora import merge_lora

    merge_lora(model.encoder)
    expected = model.eval().predict(SENTENCES, SECOND, early_exit=False)
    shutil.copytree(tmp_path / "run", tmp_path / "shipped")  # the relative reference survives a move
    got = load_checkpoint(tmp_path / "shipped" / method).predict(SENTENCES, SECOND, early_exit=False)
    for a, b in zip(expected, got):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_base_checkpoint_loop_is_reported(make_model, tmp_path):
    save_checkpoint(make_model("full"), tmp_path / "a")
    path = tmp_path / "a" / "config.json"
    data = json.loads(path.read_text())
    data["base_checkpoint"] = "../a"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="base_checkpoint"):
        load_checkpoint(tmp_path / "a")

"""Pooling: what decisions read. ``auto`` follows the backbone, padding never enters the mean, cls models answer as
before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from core.backbone import DEFAULT_BACKBONE, load_tokenizer
from core.checkpoint import load_checkpoint
from core.engine import padding_of
from core.errors import UserError
from core.methods import METHODS
from core.model import build_model
from core.pooling import POOLING_FILE, pool, resolve_pooling
from tests.conftest import SECOND, SENTENCES, randomise

# tiny checkpoints of every method saved by the code from before pooling existed (no pooling field in their
# config.json), with the answers that code gave; word embeddings no input uses are zero, so the files compress
BEFORE_POOLING = Path(__file__).parent / "data" / "cls_before_pooling"


def with_pooling_config(backbone: str, folder: Path, mean: bool) -> str:
    """A copy of the tiny backbone whose sentence-transformers pooling config declares mean (or [CLS]) pooling."""
    shutil.copytree(backbone, folder)
    (folder / POOLING_FILE).parent.mkdir()
    (folder / POOLING_FILE).write_text(
        json.dumps({"pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean})
    )
    return str(folder)


def test_auto_takes_the_backbones_declared_pooling_and_cls_without_one(tiny_backbone, tmp_path):
    assert resolve_pooling("auto", tiny_backbone) == "cls"
    assert resolve_pooling("auto", with_pooling_config(tiny_backbone, tmp_path / "mean", mean=True)) == "mean"
    assert resolve_pooling("auto", with_pooling_config(tiny_backbone, tmp_path / "cls", mean=False)) == "cls"
    assert resolve_pooling("cls", tmp_path / "mean") == "cls", "an explicit choice wins over the backbone's"
    mean_backbone = str(tmp_path / "mean")
    for method in METHODS:
        model = build_model(method, "MRPC", backbone=mean_backbone)
        assert model.method.pooling == "mean" and model.config.method_config["pooling"] == "mean", (
            "config.json records the resolved pooling"
        )


def test_mean_pooling_of_a_padded_row_equals_the_unpadded_rows():
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, 8)
    padded = torch.cat([hidden, 1e3 * torch.randn(1, 3, 8)], dim=1)  # padding states far from the real ones
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    assert torch.allclose(pool(padded, mask, "mean"), pool(hidden, torch.ones(1, 5), "mean"), atol=1e-6)
    assert torch.allclose(pool(hidden, torch.ones(1, 5), "mean"), hidden.mean(1), atol=1e-6)
    assert torch.equal(pool(padded, mask, "cls"), hidden[:, 0])
    assert torch.allclose(pool(hidden, None, "mean"), pool(hidden, torch.ones(1, 5), "mean"), atol=1e-6), (
        "no mask: no row is padded"
    )


def test_the_engine_pools_without_a_mask_only_where_no_row_is_padded():
    """At batch size 1, or where the encoder needed no layer mask (nothing padded): no mask."""
    padded = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert padding_of(torch.ones(1, 4), torch.ones(1, 4)) is None
    assert padding_of(torch.ones(3, 4), None) is None
    assert padding_of(padded, padded) is padded


def test_mean_pooled_off_ramps_read_the_mean_of_the_layers_token_states(make_model):
    model = randomise(make_model("deebert", pooling="mean"), seed=3, scale=2.0)
    trace = model.predict(SENTENCES[0], SECOND[0], early_exit=False, layer_values=True)[0]
    encoded = model.tokenize([SENTENCES[0]], [SECOND[0]])
    with torch.no_grad():
        hidden = model.encoder.embed(encoded["input_ids"], encoded["token_type_ids"])
        for layer in range(model.num_layers):
            hidden = model.encoder.run_layer(layer, hidden, None)
            probs = model.method.ramps[layer](hidden.mean(1)).softmax(-1)
            entropy = float(torch.special.entr(probs).sum())
            assert trace.per_layer[layer].values["entropy"] == pytest.approx(entropy, abs=1e-5)


def test_a_model_must_say_which_pooling_it_reads(make_model):
    config = METHODS["deebert"].Config()
    assert config.pooling == "auto"
    with pytest.raises(UserError, match="pooling"):
        METHODS["deebert"](32, 4, 2, config)


@pytest.fixture(scope="module")
def checkpoints_from_before_pooling(tmp_path_factory) -> Path:
    """The recorded checkpoints, pointed at the recorded backbone (given MiniLM's tokenizer)."""
    folder = tmp_path_factory.mktemp("before") / "cls_before_pooling"
    shutil.copytree(BEFORE_POOLING, folder)
    load_tokenizer(DEFAULT_BACKBONE).save_pretrained(folder / "backbone")
    for config_file in folder.glob("*/config.json"):
        config = json.loads(config_file.read_text())
        if "backbone" in config:
            config_file.write_text(json.dumps(config | {"backbone": str(folder / "backbone")}))
    return folder


@pytest.mark.parametrize("method", list(METHODS))
def test_cls_checkpoints_answer_exactly_as_before_pooling_existed(checkpoints_from_before_pooling, method):
    recorded = json.loads((BEFORE_POOLING / "answers.json").read_text())
    model = load_checkpoint(checkpoints_from_before_pooling / method)
    assert "pooling" not in json.loads((BEFORE_POOLING / method / "config.json").read_text())["method_config"]
    assert model.method.pooling == "cls", "a checkpoint from before pooling existed reads [CLS]"
    answers = recorded["answers"][method]
    traces = model.predict(recorded["texts"], recorded["pairs"], threshold=answers["threshold"])
    for trace, before in zip(traces, answers["traces"], strict=True):
        assert trace.layers_executed == before["layers_executed"]
        assert trace.probabilities == pytest.approx(before["probabilities"], abs=1e-6)
    if method != "full":
        assert len({tuple(before["layers_executed"]) for before in answers["traces"]}) > 1, "paths vary"


def test_checkpoint_round_trip_keeps_mean_pooling(make_model, tmp_path):
    from core.checkpoint import save_checkpoint

    model = randomise(make_model("dact", pooling="mean"), seed=1)
    save_checkpoint(model, tmp_path / "dact")
    loaded = load_checkpoint(tmp_path / "dact")
    assert loaded.method.pooling == "mean"
    for a, b in zip(model.predict(SENTENCES, SECOND), loaded.predict(SENTENCES, SECOND)):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)

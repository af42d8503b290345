"""The checkpoints shipped in assets/: all there, trained, small, and as good as their table says."""

from __future__ import annotations

from collections import Counter

import pytest

from core.checkpoint import SHIPPED_DIR, WEIGHTS_FILE, load_checkpoint, shipped_checkpoint
from training.data import DEFAULT_DATA_DIR, load_split
from training.evaluate import evaluate

PROMISED = {
    "SST-2": ["full", "deebert", "dact", "dpbert"],
    "MRPC": ["full", "deebert", "dact", "dpbert"],
    "RTE": ["full", "deebert", "dact", "dpbert"],
    "STS-B": ["full", "dpbert"],
}
SHIPPED = [(task, method) for task, methods in PROMISED.items() for method in methods if shipped_checkpoint(task, method)]
needs_data = pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason="the shared GLUE folder is not beside the project")


def test_every_promised_checkpoint_is_shipped():
    missing = [f"{task}/{method}" for task, methods in PROMISED.items() for method in methods if shipped_checkpoint(task, method) is None]
    assert not missing, f"not shipped under {SHIPPED_DIR}: {missing}"


@needs_data
@pytest.mark.parametrize("task, method", SHIPPED)
def test_shipped_checkpoint_reproduces_its_dev_result_and_beats_chance(task, method):
    folder = shipped_checkpoint(task, method)
    assert (folder / WEIGHTS_FILE).stat().st_size < 10 * 2**20, "shipped checkpoints hold heads and adapters only"
    model = load_checkpoint(folder)
    assert model.config.trained and model.config.encoder_weights == "lora"
    dev = load_split(task, "dev")
    result = evaluate(model, dev)
    recorded = model.config.metrics
    assert result["metric"] == pytest.approx(recorded["metric"], abs=0.005)
    assert result["avg_layers"] == pytest.approx(recorded["avg_layers"], abs=0.05)
    if model.config.labels is None:
        assert result["pearson"] > 0.5
    else:
        majority = max(Counter(dev["label"]).values()) / len(dev)
        assert result["accuracy"] > majority

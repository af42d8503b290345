"""The checkpoints shipped in assets/: all there, trained, small, as good and as adaptive as their table says.

Each checkpoint is re-evaluated on its task's dev set and must reproduce what its config.json
records (metric, average layers, share of the most common layer path); each adaptive point's
recorded figures are checked against the adaptivity targets of training/targets.py (share of the
full model's metric, expected speed-up, most common path, inputs answered with no layer), and
where a target is missed the checkpoint README must state the miss, with the same numbers.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from core.checkpoint import SHIPPED_DIR, load_checkpoint, read_config, shipped_checkpoint
from core.methods import BASELINE
from core.tasks import get_task
from training.data import DEFAULT_DATA_DIR, VALIDATION, load_split
from training.evaluate import evaluate
from training.publish import row_misses, shipped_rows
from training.targets import MAX_NO_LAYER_SHARE, share_of_full

PROMISED = {
    "SST-2": ["full", "deebert", "dact", "dpbert", "pabee"],
    "MRPC": ["full", "deebert", "dact", "dpbert", "pabee"],
    "RTE": ["full", "deebert", "dact", "dpbert", "pabee"],
    "STS-B": ["full", "dpbert", "pabee"],
}
SHIPPED = [
    (task, method) for task, methods in PROMISED.items() for method in methods if shipped_checkpoint(task, method)
]
ADAPTIVE = [(task, method) for task, method in SHIPPED if method != BASELINE]
EXAMPLES = json.loads((SHIPPED_DIR.parent / "examples.json").read_text(encoding="utf-8"))
needs_data = pytest.mark.skipif(
    not DEFAULT_DATA_DIR.is_dir(), reason="the shared GLUE folder is not beside the project"
)


def test_every_promised_checkpoint_is_shipped():
    missing = [
        f"{task}/{method}"
        for task, methods in PROMISED.items()
        for method in methods
        if shipped_checkpoint(task, method) is None
    ]
    assert not missing, f"not shipped under {SHIPPED_DIR}: {missing}"


@pytest.mark.parametrize("task, method", SHIPPED)
def test_shipped_checkpoints_hold_only_what_differs_and_stay_small(task, method):
    folder = shipped_checkpoint(task, method)
    assert all(path.stat().st_size < 10 * 2**20 for path in folder.iterdir()), "a Space needs Git LFS above 10 MB"
    config = read_config(folder)
    assert config.trained and config.task == get_task(task).name and config.method == method
    if method == BASELINE:
        assert config.encoder_weights == "delta", "the full model ships as int8 differences from the backbone"
    else:
        assert config.base_checkpoint == f"../{BASELINE}", "methods build on their task's shipped full model"
        assert config.encoder_weights in {"base", "lora"}


@pytest.mark.parametrize("task, method", ADAPTIVE)
def test_operating_points_were_chosen_on_the_validation_split(task, method):
    point = read_config(shipped_checkpoint(task, method)).operating_point
    assert point["chosen_on"] == "validation"
    assert point["validation_split"]["seed"] == VALIDATION.seed and point["validation_split"]["rows"] > 0


@needs_data
@pytest.mark.parametrize("task, method", SHIPPED)
def test_shipped_checkpoint_reproduces_its_dev_result_and_beats_chance(task, method):
    model = load_checkpoint(shipped_checkpoint(task, method))
    dev = load_split(task, "dev")
    result = evaluate(model, dev)
    recorded = model.config.metrics
    assert result["metric"] == pytest.approx(recorded["metric"], abs=0.005)
    assert result["avg_layers"] == pytest.approx(recorded["avg_layers"], abs=0.05)
    assert result["top_path_share"] == pytest.approx(recorded["top_path_share"], abs=0.02)
    assert result["no_layer_share"] == pytest.approx(recorded["no_layer_share"], abs=0.02)
    if model.config.labels is None:
        assert result["pearson"] > 0.5
    else:
        majority = max(Counter(dev["label"]).values()) / len(dev)
        assert result["accuracy"] > majority


@pytest.mark.parametrize("task, method", ADAPTIVE)
def test_adaptive_points_meet_the_targets_or_the_table_states_the_miss(task, method):
    """% of full is against the shipped full model and compared as the targets compare (MRPC: accuracy and F1 both)."""
    recorded = read_config(shipped_checkpoint(task, method)).metrics
    reference = read_config(shipped_checkpoint(task, BASELINE)).metrics
    assert recorded["reference_metric"] == pytest.approx(reference["metric"]), (
        "% of full is against the shipped full model"
    )
    assert recorded["metric_pct_of_full"] == pytest.approx(
        100 * share_of_full(get_task(task).name, recorded, reference), abs=0.01
    )
    if get_task(task).name == "MRPC":
        lower = min(recorded["accuracy"] / reference["accuracy"], recorded["f1"] / reference["f1"])
        assert recorded["metric_pct_of_full"] == pytest.approx(100 * lower, abs=0.01), (
            "MRPC keeps the lower of accuracy's and F1's share"
        )
    assert 0.0 <= recorded["no_layer_share"] <= 1.0, "the share of inputs answered with no layer is recorded"
    row = next(row for row in shipped_rows() if row["task"] == get_task(task).name and row["method"] == method)
    misses = row_misses(row)
    if recorded["no_layer_share"] > MAX_NO_LAYER_SHARE:
        assert any(miss.startswith("no layer") for miss in misses), (
            "more than the allowed share answered with no layer is a miss"
        )
    line = next(
        line
        for line in (SHIPPED_DIR / "README.md").read_text().splitlines()
        if line.startswith(f"| {get_task(task).name} | {method} |")
    )
    assert ("; ".join(misses) or "met") in line, f"the table must state {misses or 'met'} for {task} {method}"


@pytest.mark.parametrize("task", list(PROMISED))
def test_the_full_model_answers_the_demo_examples_as_intended(task):
    model = load_checkpoint(shipped_checkpoint(task, BASELINE))
    examples = EXAMPLES[task]
    traces = model.predict(
        [item["text"] for item in examples], [item["text_pair"] for item in examples] if model.config.pair else None
    )
    for item, trace in zip(examples, traces):
        expected = item["expected"]
        if isinstance(expected, list):
            assert expected[0] <= trace.prediction <= expected[1], (item["text"], trace.prediction)
        else:
            assert trace.prediction == expected, (item["text"], trace.probabilities)

"""The command line: JSON traces, files of inputs, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.checkpoint import save_checkpoint
from core.methods import METHODS
from core.predict import main
from tests.conftest import randomise


@pytest.fixture
def checkpoint(make_model, tmp_path):
    model = randomise(make_model("dpbert", "MRPC"), seed=3)
    model.config.trained = True
    return str(save_checkpoint(model, tmp_path / "dpbert"))


def test_json_prints_one_trace_per_input(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in.tsv"
    inputs.write_text("first sentence\tsecond one\n\nanother\tpair here\nthird\tx\n")
    assert main(["--checkpoint", checkpoint, "--input-file", str(inputs), "--batch-size", "2", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    traces = [json.loads(line) for line in lines]
    assert [trace["text"] for trace in traces] == ["first sentence", "another", "third"]
    assert all(trace["method"] == "dpbert" and len(trace["per_layer"]) == 4 for trace in traces)


def test_no_early_exit_runs_every_layer(checkpoint, capsys):
    assert main(["--checkpoint", checkpoint, "--text", "a", "--text-pair", "b", "--threshold", "1.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers_executed"] == []
    assert main(["--checkpoint", checkpoint, "--text", "a", "--text-pair", "b", "--no-early-exit", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers_executed"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--text", "   ", "--text-pair", "b"], "empty text"),
        (["--text", "a"], "takes a sentence pair"),
        (["--input-file", "/does/not/exist.tsv"], "does not exist"),
        (["--text", "a", "--text-pair", "b", "--threshold", "1.5"], "out of range"),
        (["--text", "a", "--text-pair", "b", "--threshold", "nan"], "out of range"),
        (["--text", "a", "--text-pair", "b", "--batch-size", "0"], "batch size"),
    ],
)
def test_bad_input_gives_one_line_error(checkpoint, capsys, arguments, message):
    assert main(["--checkpoint", checkpoint, *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_pair_given_to_single_sentence_model(make_model, tmp_path, capsys):
    folder = save_checkpoint(make_model("deebert", "SST-2"), tmp_path / "sst2")
    assert main(["--checkpoint", str(folder), "--text", "a", "--text-pair", "b"]) == 2
    assert "single sentence" in capsys.readouterr().err


def test_threshold_for_dact_is_refused(make_model, tmp_path, capsys):
    folder = save_checkpoint(make_model("dact", "RTE"), tmp_path / "dact")
    assert main(["--checkpoint", str(folder), "--text", "a", "--text-pair", "b", "--threshold", "0.2"]) == 2
    assert "no threshold" in capsys.readouterr().err


def test_regression_for_deebert_is_refused(capsys):
    assert main(["--method", "deebert", "--task", "STS-B", "--text", "a", "--text-pair", "b"]) == 2
    assert "regression" in capsys.readouterr().err


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_on_a_pair_with_the_default_backbone(method):
    """The real MiniLM backbone, as a new user would call it (a subprocess: no traceback may appear)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core.predict",
            "--method",
            method,
            "--task",
            "MRPC",
            "--text",
            "The cat sat on the mat.",
            "--text-pair",
            "A cat was sitting on the mat.",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    trace = json.loads(done.stdout)
    assert trace["method"] == method and trace["num_layers"] == 6 and trace["prediction"] in trace["probabilities"]
    assert "Traceback" not in done.stderr

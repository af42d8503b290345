"""The command line: JSON traces, files of inputs, and one-line errors with a non-zero exit."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest
import torch

from core.checkpoint import save_checkpoint
from core.engine import BatchResult, LayerRecord
from core.heads import PooledHead
from core.methods import METHODS, RunSettings
from core.outcome import RanBatch
from core.predict import main
from core.trace import build_traces
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
    assert [trace["line"] for trace in traces] == [1, 3, 4], "each trace says which file line it answers"
    assert all(trace["method"] == "dpbert" and len(trace["per_layer"]) == 4 for trace in traces)


def test_plain_output_names_the_model_and_repeats_each_input_numbered_by_file_line(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in.tsv"
    inputs.write_text("\nfirst sentence\tsecond one\n\n   \nanother \u2028 one\tpair here\r\nthird\tx\n")
    assert main(["--checkpoint", checkpoint, "--input-file", str(inputs), "--threshold", "0.4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("DPBERT (dpbert) on MRPC, planner threshold 0.4; checkpoint ") and checkpoint in out[0]
    labelled = [line for line in out if line.startswith("[")]
    assert labelled == [
        '[line 2] "first sentence" ‖ "second one"',
        '[line 5] "another \\u2028 one" ‖ "pair here"',
        '[line 6] "third" ‖ "x"',
    ]
    assert main(["--checkpoint", checkpoint, "--text", "a", "--text-pair", "b"]) == 0
    out = capsys.readouterr().out
    assert "planner threshold 0.5" in out.splitlines()[0] and '[input 1] "a" ‖ "b"' in out


@pytest.mark.parametrize(
    "content, message",
    [
        ("fine\tpair\na\tb\tc\n", "line 2: 2 tabs; a line holds one sentence, or two separated by one tab"),
        ("fine\tpair\n\nalone\n", "line 1 holds a sentence pair but line 3 a single sentence"),
        ("fine\tpair\nsecond\t  \n", "line 2: the second sentence is empty"),
        ("fine\tpair\n\u200b\u200b\tpair\n", "line 2: the first sentence is empty"),
        ("\n\n  \n", "has no inputs"),
    ],
)
def test_ambiguous_input_lines_are_refused_with_their_line_number(checkpoint, tmp_path, capsys, content, message):
    inputs = tmp_path / "in.tsv"
    inputs.write_text(content)
    assert main(["--checkpoint", checkpoint, "--input-file", str(inputs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["--text", "a", "--text-pair", "b", "--threshold", "0.3", "--no-early-exit"],
            "--no-early-exit runs every layer: give only one of them",
        ),
        (["--input-file", "x.tsv", "--text-pair", "b"], "--text-pair goes with --text"),
        (["--text-pair", "b"], "--text-pair needs --text"),
        (["--text", "\u200b\u200d", "--text-pair", "b"], "only invisible characters"),
        (["--text", "a", "--text-pair", "b", "--device", "tpu7"], "device"),
    ],
)
def test_conflicting_or_empty_options_are_refused(checkpoint, capsys, arguments, message):
    assert main(["--checkpoint", checkpoint, *arguments]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_a_gpu_without_one_says_so(checkpoint, capsys):
    assert main(["--checkpoint", checkpoint, "--text", "a", "--text-pair", "b", "--device", "cuda"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
    assert main(["--checkpoint", checkpoint, "--text", "a", "--text-pair", "b", "--device", "cpu", "--json"]) == 0


def test_a_regression_score_comes_with_its_scale_and_a_flag_when_outside(make_model, tmp_path, capsys):
    model = make_model("dpbert", "STS-B")
    with torch.no_grad():
        for module in model.method.modules():
            if isinstance(module, PooledHead):
                module.out.bias.fill_(-3.0)
    folder = save_checkpoint(model, tmp_path / "stsb")
    assert main(["--checkpoint", str(folder), "--text", "a man plays", "--text-pair", "a man is playing"]) == 0
    out = capsys.readouterr().out
    assert (
        "score 0.000 on the 0–5 scale (0: unrelated, 5: same meaning); the model gave -" in out
        and "outside the scale, shown clipped" in out
    )


def test_input_the_model_can_hardly_read_gets_a_note(checkpoint, capsys):
    assert main(["--checkpoint", checkpoint, "--text", "😀 🎉 🙈", "--text-pair", "fine words here", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["text"] == "😀 🎉 🙈"
    assert "note: input 1: text: has no letters or digits" in captured.err and "second sentence" not in captured.err


def test_no_early_exit_runs_every_layer(checkpoint, capsys):
    assert main(["--checkpoint", checkpoint, "--text", "a", "--text-pair", "b", "--threshold", "1.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers_executed"] == [1]  # layer 1 always runs; the rest are bypassed
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


class CountingTokenizer:
    """A tokenizer that counts how often it is asked to tokenize; everything else is the wrapped one's."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_each_input_is_tokenized_once_and_an_over_long_one_is_cut_to_the_limit_and_flagged(make_model, monkeypatch):
    import core.model

    model = make_model("deebert")
    long = " ".join(["word"] * 3 * model.max_length)
    texts, pairs = ["short", long, "a bit longer than short", "x"], ["p", "q", long, "y " * (model.max_length - 5)]
    counting = model.tokenizer = CountingTokenizer(model.tokenizer)
    engine_inputs = []

    def run_batch(encoder, method, input_ids, attention_mask, token_type_ids, settings):
        engine_inputs.append(
            {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        )
        return batch_run(encoder, method, input_ids, attention_mask, token_type_ids, settings)

    batch_run = core.model.run_batch
    monkeypatch.setattr(core.model, "run_batch", run_batch)
    traces = model.predict(texts, pairs, batch_size=2)
    assert counting.calls == 1 and len(engine_inputs) == 2, "one tokenizer call for all the inputs, then two batches"
    assert [trace.truncated for trace in traces] == [False, True, True, False]
    engine_inputs.clear()
    model.predict(texts, pairs, batch_size=len(texts))
    lengths = [
        len(ids) for ids in counting.tokenizer(texts, pairs, truncation=True, max_length=model.max_length)["input_ids"]
    ]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    expected = model.tokenize([texts[i] for i in order], [pairs[i] for i in order])
    assert expected["input_ids"].shape[1] == model.max_length
    assert all(torch.equal(engine_inputs[0][name], expected[name]) for name in expected), (
        "the engine reads what one truncating, padding call gives"
    )


def fixed_batches() -> dict[tuple[str, str], BatchResult]:
    """Engine outcomes of two rows written out by hand (exact binary fractions, so their JSON is the same on every
    machine).

    DeeBERT: row 1 exits after layer 2. DPBERT: row 2 bypasses layer 3; once classifying, once scoring.
    """
    deebert = BatchResult(
        outputs=torch.tensor([[0.75, 0.25], [0.125, 0.875]]),
        exit_layer=torch.tensor([2, 0]),
        layers=[
            LayerRecord(
                torch.tensor([0, 1]),
                None,
                {"probs": torch.tensor([[0.5, 0.5], [0.25, 0.75]]), "entropy": torch.tensor([0.6875, 0.5625])},
            ),
            LayerRecord(
                torch.tensor([0, 1]),
                None,
                {"probs": torch.tensor([[0.75, 0.25], [0.375, 0.625]]), "entropy": torch.tensor([0.25, 0.625])},
            ),
            LayerRecord(
                torch.tensor([1]), None, {"probs": torch.tensor([[0.25, 0.75]]), "entropy": torch.tensor([0.5])}
            ),
            LayerRecord(
                torch.tensor([1]), None, {"probs": torch.tensor([[0.125, 0.875]]), "entropy": torch.tensor([0.375])}
            ),
        ],
        num_layers=4,
    )
    planner_logits = [(math.inf, math.inf), (0.0, math.inf), (math.inf, -math.inf), (math.inf, 0.0)]
    runs = [None, None, torch.tensor([True, False]), None]

    def dpbert(outputs: torch.Tensor) -> BatchResult:
        layers = [
            LayerRecord(torch.tensor([0, 1]), ran, {"planner_logit": torch.tensor(logits)})
            for logits, ran in zip(planner_logits, runs)
        ]
        return BatchResult(outputs=outputs, exit_layer=torch.tensor([0, 0]), layers=layers, num_layers=4)

    return {
        ("deebert", "MRPC"): deebert,
        ("dpbert", "MRPC"): dpbert(torch.tensor([[0.625, 0.375], [0.5, 0.5]])),
        ("dpbert", "STS-B"): dpbert(torch.tensor([3.5, -0.25])),
    }


# sha256 of the two traces' JSON lines, as the traces were before trace building moved out of the model
TRACE_JSON_SHA256 = {
    ("deebert", "MRPC"): "2813771faf60b3cb8f2cb0e840c616185703ef4a6e0463fb8f927b08966575e4",
    ("dpbert", "MRPC"): "e09b33642f4c2663174b64bab4e5ba3096df95738b33b79bfa3e1734bc3f6a6a",
    ("dpbert", "STS-B"): "4ee8dfdd54c17784a199c97e9f75287f1956e3160b8f5a1dacfde75dea8b9f80",
}


@pytest.mark.parametrize("method, task", list(TRACE_JSON_SHA256))
def test_trace_json_of_a_fixed_batch_is_unchanged(make_model, method, task):
    batch = RanBatch([0, 1], fixed_batches()[method, task], latency_ms=2.5, truncated=[False, True])
    traces = build_traces(
        make_model(method, task),
        batch,
        RunSettings(threshold=0.5),
        ["first text", "second text"],
        ["first pair", "second pair"],
        layer_values=True,
    )
    lines = [trace.to_json() for trace in traces]
    assert json.loads(lines[0])["text"] == "first text" and json.loads(lines[1])["truncated"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == TRACE_JSON_SHA256[method, task], lines

"""Scale-out paths: every input follows the model's device, and training and batch prediction run as several processes.

No GPU is needed: a spy shows where ``predict`` sends its inputs, and ``accelerate launch`` starts
two CPU processes that talk over gloo. With a CUDA GPU present, the GPU tests run as well.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core.model
from core.checkpoint import load_checkpoint, save_checkpoint
from core.devices import best_device, resolve_device
from core.errors import UserError
from core.predict import main as predict_main
from interpret.attributions import encode
from tests.conftest import SECOND, SENTENCES, randomise
from tests.test_training import ROWS, glue_dir  # noqa: F401  (the miniature GLUE folder fixture)

ROOT = Path(__file__).resolve().parent.parent
META = torch.device("meta")  # a device that is not the CPU, present on every machine
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_device_names_are_resolved_and_checked():
    assert resolve_device(None) == resolve_device("auto") == best_device()
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("graphics card")
    with pytest.raises(UserError, match="unsupported device"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        assert best_device() in (torch.device("cpu"), torch.device("mps"))
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_predict_sends_its_inputs_to_the_model_device(make_model, monkeypatch):
    """On a GPU the tokenizer's CPU tensors must follow the weights: here the model says it lives on another device."""
    model = randomise(make_model("deebert"), seed=1)
    expected = model.predict(SENTENCES[:3], SECOND[:3], threshold=0.6)
    seen, tokenized, real_run, real_pad = [], [], core.model.run_batch, model.pad_batch

    def keep(
        tokens, rows
    ):  # the padded CPU tensors, kept so the spy can run the real batch (meta tensors hold no data)
        tokenized.append(real_pad(tokens, rows))
        return tokenized[-1]

    def spy(encoder, method, input_ids, attention_mask, token_type_ids, settings):
        seen.append({tensor.device for tensor in (input_ids, attention_mask, token_type_ids)})
        batch = tokenized.pop(0)
        return real_run(
            encoder, method, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], settings
        )

    monkeypatch.setattr(model, "pad_batch", keep)
    monkeypatch.setattr(core.model, "run_batch", spy)
    monkeypatch.setattr(type(model), "device", property(lambda self: META))
    traces = model.predict(SENTENCES[:3], SECOND[:3], threshold=0.6, batch_size=2)
    assert seen == [{META}, {META}]
    for got, want in zip(traces, expected, strict=True):  # other batches, other padding: equal up to float rounding
        assert (
            got.layers_executed == want.layers_executed and got.prediction == want.prediction and got.text == want.text
        )
        assert got.probabilities == pytest.approx(want.probabilities, abs=1e-5)


def test_attributions_encode_on_the_model_device(make_model, monkeypatch):
    model = make_model("dpbert")
    trace = model.predict("a fine film", "a good film")[0]
    monkeypatch.setattr(type(model), "device", property(lambda self: META))
    assert {tensor.device for tensor in encode(model, trace).values()} == {META}


@needs_gpu
@pytest.mark.parametrize("method", ["deebert", "dact", "dpbert", "pabee"])
def test_a_model_on_the_gpu_answers_as_on_the_cpu(make_model, method, tmp_path):
    model = randomise(make_model(method), seed=2)
    on_cpu = model.predict(SENTENCES, SECOND, batch_size=3)
    on_gpu = model.to("cuda").predict(SENTENCES, SECOND, batch_size=3)
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert gpu.layers_executed == cpu.layers_executed and gpu.prediction == cpu.prediction
    save_checkpoint(model, tmp_path / "saved")  # weights on the GPU save like any other
    assert load_checkpoint(tmp_path / "saved").predict(SENTENCES[0], SECOND[0])[0].prediction == on_cpu[0].prediction


# --- several processes ---------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(*arguments: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """``accelerate launch`` with two processes. Its ``--cpu`` launcher starts one process unless MPI is set up, so two
    CPU processes go through the multi-process launcher (torchrun); the scripts then pick the CPU and gloo
    themselves."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
    ]
    command += [
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *arguments,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not torch.cuda.is_available():
        environment["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment)


def test_training_runs_as_two_processes_and_saves_a_checkpoint_that_loads_and_predicts(
    glue_dir,  # noqa: F811
    tiny_backbone,
    tmp_path,
):
    out = tmp_path / "full"
    done = launch(
        "-m",
        "training.train",
        "--method",
        "full",
        "--task",
        "MRPC",
        "--data-dir",
        str(glue_dir),
        "--backbone",
        tiny_backbone,
        "--out",
        str(out),
        "--finetune",
        "full",  # the pooler is trainable but unused: DDP must not wait for its gradient
        "--batch-size",
        "4",
        "--max-steps",
        "3",
        "--quiet",
        "--no-bf16",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["trained"] and config["training"]["processes"] == 2 and config["training"]["steps"] == 3
    assert config["metrics"]["examples"] == len(ROWS), "the run ends by evaluating on the whole dev set"
    model = load_checkpoint(out)
    trace = model.predict("a gorgeous , witty , seductive movie .", "the film is charming .")[0]
    assert trace.prediction in ("not_equivalent", "equivalent") and trace.layers_executed == [1, 2, 3, 4]


def test_batch_prediction_splits_a_file_across_processes_and_prints_one_output_in_input_order(
    make_model, tmp_path, capsys
):
    model = randomise(make_model("deebert"), seed=4)
    model.config.trained = True
    checkpoint = str(save_checkpoint(model, tmp_path / "deebert"))
    lines = []
    for index in range(37):  # an odd count: the processes get unequal shares
        lines.append(f"{SENTENCES[index % len(SENTENCES)]} number {index}\t{SECOND[(index * 3) % len(SECOND)]}")
        if index % 5 == 0:
            lines.append("")  # blank lines keep their place in the numbering
    inputs = tmp_path / "big.tsv"
    inputs.write_text("\n".join(lines) + "\n")
    arguments = [
        "--checkpoint",
        checkpoint,
        "--input-file",
        str(inputs),
        "--batch-size",
        "4",
        "--threshold",
        "0.6",
        "--json",
    ]
    assert predict_main(arguments) == 0
    alone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    done = launch("-m", "core.predict", *arguments)
    assert done.returncode == 0, done.stderr[-3000:]
    split = [json.loads(line) for line in done.stdout.splitlines()]
    assert "process 1 of 2: 19 input(s)" in done.stderr and "process 2 of 2: 18 input(s)" in done.stderr
    assert (
        [trace["line"] for trace in split]
        == [trace["line"] for trace in alone]
        == [i + 1 for i, line in enumerate(lines) if line]
    )
    assert [trace["text"] for trace in split] == [line.split("\t")[0] for line in lines if line]
    for one, other in zip(split, alone):
        assert one["layers_executed"] == other["layers_executed"] and one["prediction"] == other["prediction"]
        assert one["probabilities"] == pytest.approx(other["probabilities"], abs=1e-5)


def _mean_of_ranks(rank: int, world_size: int, port: int, results) -> None:
    import torch.distributed as dist

    from core.methods.dpbert import mean_over_processes

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results[rank] = float(mean_over_processes(torch.tensor(float(rank))))
    finally:
        dist.destroy_process_group()


def test_dpbert_rate_control_moves_the_biases_alike_in_every_process():
    """Each process sees its own batch's rate; the bias shift uses their mean, so the replicas stay equal."""
    import torch.multiprocessing as mp

    from core.methods.dpbert import mean_over_processes

    assert float(mean_over_processes(torch.tensor(3.0))) == 3.0, "one process: the value itself"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    results = mp.get_context("spawn").Manager().dict()
    mp.spawn(_mean_of_ranks, args=(2, port, results), nprocs=2, join=True)
    assert dict(results) == {0: 0.5, 1: 0.5}

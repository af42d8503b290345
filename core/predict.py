"""Command line: run an adaptive model on sentences or sentence pairs and print predictions and traces.

python -m core.predict --checkpoint assets/checkpoints/mrpc/dact --text "..." --text-pair "..."
python -m core.predict --method deebert --task SST-2 --text "a gorgeous film" --threshold 0.3 --json
python -m core.predict --checkpoint DIR --input-file inputs.tsv --batch-size 32 --json
accelerate launch --multi_gpu --num_processes 4 -m core.predict --checkpoint DIR --input-file big.tsv \\
    --json > traces.jsonl

Under ``accelerate launch`` (several GPUs, or several CPU processes) each process predicts its share
of the file and the first process prints every result, in input order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from core.backbone import DEFAULT_BACKBONE
from core.checkpoint import load_checkpoint, load_for_task
from core.devices import AUTO, resolve_device
from core.errors import UserError, command_line
from core.inputs import has_visible_text, reading_notes
from core.methods import METHODS
from core.model import AdaptiveModel
from core.precision import CHOICES, CPU_ONLY, FASTEST, FP32, check_device, fastest_precision
from core.tasks import find_task, get_task
from core.trace import Trace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m core.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_argument_group("model (a checkpoint folder, or a method and task)")
    which.add_argument("--checkpoint", help="checkpoint folder (config.json + model.safetensors)")
    which.add_argument(
        "--method",
        choices=list(METHODS),
        help="with --task: use the shipped checkpoint, or untrained heads if none is shipped",
    )
    which.add_argument("--task", help="task name, e.g. SST-2, MRPC, RTE, STS-B")
    which.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="backbone for untrained heads (path or hub id; default: %(default)s)",
    )
    inputs = parser.add_argument_group("input")
    inputs.add_argument("--text", help="the sentence (or the first of a pair)")
    inputs.add_argument("--text-pair", help="the second sentence, for pair tasks")
    inputs.add_argument("--input-file", help="TSV file: one input per line, a pair separated by a tab")
    inputs.add_argument("--batch-size", type=int, default=32, help="inputs run together (default: %(default)s)")
    run = parser.add_argument_group("how to run")
    run.add_argument(
        "--threshold",
        type=float,
        help="the method's knob: entropy threshold S (DeeBERT), planner threshold (DPBERT), patience t (PABEE); "
        "DACT has none",
    )
    run.add_argument("--no-early-exit", action="store_true", help="run every layer (no exit, no halting, no bypass)")
    run.add_argument("--json", action="store_true", help="print one JSON trace per input, one per line")
    run.add_argument(
        "--device",
        default=AUTO,
        help="cpu, cuda, cuda:N, mps or auto (default: the best available; under accelerate launch, each process's "
        "own)",
    )
    run.add_argument(
        "--precision",
        choices=CHOICES,
        default=FP32,
        help="fp32 (default), bf16, int8 (dynamic quantization), onnx-fp32 or onnx-int8 (layers as ONNX Runtime "
        "sessions; these three run on the CPU), or fastest: the fastest of them on the device whose validation "
        "check, recorded in the checkpoint, keeps its operating point",
    )
    return parser.parse_args(argv)


def resolve_model(args: argparse.Namespace) -> tuple[AdaptiveModel, str | None]:
    """The model to run, and a note for the user when its heads are untrained."""
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint)
    elif args.method and args.task:
        model = load_for_task(get_task(args.task).name, args.method, backbone=args.backbone)
    else:
        raise UserError("say which model to run: --checkpoint DIR, or --method and --task")
    note = None
    if not model.config.trained:
        note = (
            f"note: the {model.config.method} heads for {model.config.task} are untrained, so predictions are "
            "arbitrary; "
            f"train them with: python -m training.train --method {model.config.method} --task {model.config.task}"
        )
    return model, note


@dataclass
class Inputs:
    texts: list[str]
    pairs: list[str] | None
    lines: list[int] | None = None  # the file line of each input (None: given with --text)

    def label(self, index: int) -> str:
        return f"line {self.lines[index]}" if self.lines else f"input {index + 1}"


def check_options(args: argparse.Namespace) -> None:
    """Refuse options that contradict each other instead of silently ignoring one."""
    if args.no_early_exit and args.threshold is not None:
        raise UserError(
            "--threshold sets when the method exits or bypasses layers, but --no-early-exit runs every layer: "
            "give only one of them"
        )
    if args.input_file and args.text is not None:
        raise UserError("give either --text or --input-file, not both")
    if args.input_file and args.text_pair is not None:
        raise UserError(
            "--text-pair goes with --text; in --input-file, put each second sentence after a tab on its line"
        )
    if args.text_pair is not None and args.text is None:
        raise UserError("--text-pair needs --text (the first sentence)")


def read_file_inputs(path: Path) -> Inputs:
    """One input per non-blank line, numbered by file line; a pair is two sentences separated by one tab."""
    if not path.is_file():
        raise UserError(f"input file {path} does not exist")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"input file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from error
    texts, pairs, lines = [], [], []
    for number, line in enumerate(
        content.split("\n"), start=1
    ):  # only newlines end a line (str.splitlines also splits on \x0c, \u2028, ...)
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > 2:
            raise UserError(
                f"input file {path}, line {number}: {len(fields) - 1} tabs; a line holds one sentence, or two "
                "separated by one tab (a sentence cannot contain a tab)"
            )
        for position, field in enumerate(fields):
            if not has_visible_text(field):
                raise UserError(
                    f"input file {path}, line {number}: the {('first', 'second')[position]} sentence is empty"
                )
        texts.append(fields[0])
        pairs.append(fields[1] if len(fields) == 2 else None)
        lines.append(number)
    if not texts:
        raise UserError(f"input file {path} has no inputs")
    with_pair = [index for index, pair in enumerate(pairs) if pair is not None]
    if with_pair and len(with_pair) != len(texts):
        single = next(index for index, pair in enumerate(pairs) if pair is None)
        raise UserError(
            f"input file {path}: line {lines[with_pair[0]]} holds a sentence pair but line {lines[single]} a "
            "single sentence: give every line the same shape"
        )
    return Inputs(texts, pairs if with_pair else None, lines)


def read_inputs(args: argparse.Namespace) -> Inputs:
    check_options(args)
    if args.input_file:
        return read_file_inputs(Path(args.input_file))
    if args.text is None:
        raise UserError("nothing to predict: give --text (and --text-pair for pair tasks) or --input-file")
    for option, value in (("--text", args.text), ("--text-pair", args.text_pair)):
        if value is not None and value.strip() and not has_visible_text(value):
            raise UserError(
                f"{option} is empty: it holds only invisible characters (such as zero-width spaces); give some words"
            )
    return Inputs([args.text], None if args.text_pair is None else [args.text_pair])


def quoted(text: str, limit: int = 100) -> str:
    """The text in quotes, shortened to ``limit`` characters, with anything unprintable (line breaks, zero-width
    spaces) escaped.
    """
    shown = json.dumps(text if len(text) <= limit else text[: limit - 1] + "…", ensure_ascii=False)
    return "".join(character if character.isprintable() else f"\\u{ord(character):04x}" for character in shown)


def heading(model: AdaptiveModel, threshold: float | None, early_exit: bool) -> str:
    """What runs: method, task, operating point and checkpoint (printed once, before the plain-text results)."""
    method = model.method
    if not early_exit:
        point = "every layer (--no-early-exit)"
    elif method.knob is None:
        point = "no threshold (its trade-off is set in training)" if method.exits_early else "every layer"
    else:
        value = model.default_threshold() if threshold is None else threshold
        point = f"{method.knob.name} {value:g}" + (
            " (the checkpoint's)" if threshold is None and model.config.threshold is not None else ""
        )
    source = model.source or f"untrained heads on {model.config.backbone}"
    precision = "" if model.precision == FP32 else f", {model.precision}"
    return f"{method.title} ({model.config.method}) on {model.config.task}, {point}{precision}; checkpoint {source}"


def score_text(score: float, task: str) -> str:
    """A regression score with its task's scale, flagged (and shown clipped) when the model answered outside it.

    A task without a scale (one's own): the score.
    """
    spec = find_task(task)
    if spec is None or spec.score_range is None:
        return f"score {score:.3f}"
    clipped = spec.clip_score(score)
    text = f"score {clipped:.3f} on the {spec.scale_text()}"
    if clipped != score:
        text += f"; the model gave {score:.3f}, outside the scale, shown clipped"
    return text


def describe(trace: Trace, label: str) -> str:
    """A short human-readable summary of one trace: which input, the answer, and the layers it took."""
    asked = quoted(trace.text) + ("" if trace.text_pair is None else " ‖ " + quoted(trace.text_pair))
    if trace.probabilities:
        odds = ", ".join(f"{name} {p:.3f}" for name, p in trace.probabilities.items())
        answer = f"{trace.prediction}  ({odds})"
    else:
        answer = score_text(trace.prediction, trace.task)
    parts = [f"layers executed {trace.layers_executed} of {trace.num_layers}"]
    if trace.layers_skipped:
        parts.append(f"skipped {trace.layers_skipped}")
    if trace.exit_layer is not None:
        parts.append(f"exit after layer {trace.exit_layer}")
    parts.append(f"expected speed-up {trace.expected_speedup:.2f}x")
    parts.append(f"{trace.latency_ms:.1f} ms")
    if trace.truncated:
        parts.append("input truncated to the model's limit")
    return f"[{label}] {asked}\n    {answer}\n    " + " · ".join(parts)


def predict_everywhere(
    model: AdaptiveModel, inputs: Inputs, args: argparse.Namespace, device: torch.device
) -> list[Trace] | None:
    """Every input's trace, in input order.

    Under ``accelerate launch`` each process predicts its share on its own device and the first process gathers them
    all (the others get None).
    """
    # the JSON trace carries every layer's values; the plain answer needs only the path
    settings = {
        "threshold": args.threshold,
        "early_exit": not args.no_early_exit,
        "batch_size": args.batch_size,
        "layer_values": args.json,
    }
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return model.to(device).predict(inputs.texts, inputs.pairs, **settings)
    from accelerate import PartialState  # only when launched as several processes
    from accelerate.utils import gather_object

    state = PartialState(cpu=device.type == "cpu")
    model = model.to(state.device)
    # check everything before splitting: a refusal must stop every process alike, never leave one waiting for the
    # others
    model.check_inputs(inputs.texts, inputs.pairs)
    model.settings(args.threshold, not args.no_early_exit)
    if args.batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {args.batch_size}")
    with state.split_between_processes(list(range(len(inputs.texts)))) as mine:
        print(
            f"process {state.process_index + 1} of {state.num_processes}: {len(mine)} input(s) on {state.device}",
            file=sys.stderr,
            flush=True,
        )
        traces = (
            model.predict(
                [inputs.texts[i] for i in mine],
                None if inputs.pairs is None else [inputs.pairs[i] for i in mine],
                **settings,
            )
            if mine
            else []
        )
    gathered = gather_object(list(zip(mine, traces)))
    if not state.is_main_process:
        return None
    ordered = dict(gathered)
    return [ordered[index] for index in range(len(inputs.texts))]


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = read_inputs(args)
    device = torch.device("cpu") if args.precision in CPU_ONLY and args.device == AUTO else resolve_device(args.device)
    precision = args.precision
    if precision != FASTEST:
        check_device(precision, device)
    model, note = resolve_model(args)
    if precision == FASTEST:  # the checkpoint's choice for the device it will run on
        choice = fastest_precision(model.config.operating_point, device)
        precision = choice.precision
        print(f"fastest precision: {choice.describe()}", file=sys.stderr)
    model = model.with_precision(precision)
    traces = predict_everywhere(model, inputs, args, device)
    if traces is None:  # another process prints the results
        return 0
    if note:
        print(note, file=sys.stderr)
    for index, (text, pair) in enumerate(zip(inputs.texts, inputs.pairs or [None] * len(inputs.texts))):
        for reading in reading_notes(model.tokenizer, text, "text") + (
            [] if pair is None else reading_notes(model.tokenizer, pair, "second sentence")
        ):
            print(f"note: {inputs.label(index)}: {reading}", file=sys.stderr)
    if not args.json:
        print(heading(model, args.threshold, not args.no_early_exit))
    for index, trace in enumerate(traces):
        if args.json:
            print(
                json.dumps(
                    {**({"line": inputs.lines[index]} if inputs.lines else {}), **trace.to_dict()}, ensure_ascii=False
                )
            )
        else:
            print(describe(trace, inputs.label(index)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

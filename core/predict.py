"""Command line: run an adaptive model on sentences or sentence pairs and print predictions and traces.

python -m core.predict --checkpoint assets/checkpoints/mrpc/dact --text "..." --text-pair "..."
python -m core.predict --method deebert --task SST-2 --text "a gorgeous film" --threshold 0.3 --json
python -m core.predict --checkpoint DIR --input-file inputs.tsv --batch-size 32 --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.backbone import DEFAULT_BACKBONE
from core.checkpoint import load_checkpoint, load_for_task
from core.errors import UserError, command_line
from core.methods import METHODS
from core.model import AdaptiveModel
from core.tasks import get_task
from core.trace import Trace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m core.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_argument_group("model (a checkpoint folder, or a method and task)")
    which.add_argument("--checkpoint", help="checkpoint folder (config.json + model.safetensors)")
    which.add_argument("--method", choices=list(METHODS), help="with --task: use the shipped checkpoint, or untrained heads if none is shipped")
    which.add_argument("--task", help="task name, e.g. SST-2, MRPC, RTE, STS-B")
    which.add_argument("--backbone", default=DEFAULT_BACKBONE, help="backbone for untrained heads (path or hub id; default: %(default)s)")
    inputs = parser.add_argument_group("input")
    inputs.add_argument("--text", help="the sentence (or the first of a pair)")
    inputs.add_argument("--text-pair", help="the second sentence, for pair tasks")
    inputs.add_argument("--input-file", help="TSV file: one input per line, a pair separated by a tab")
    inputs.add_argument("--batch-size", type=int, default=32, help="inputs run together (default: %(default)s)")
    run = parser.add_argument_group("how to run")
    run.add_argument(
        "--threshold", type=float, help="the method's knob: entropy threshold S (DeeBERT), planner threshold (DPBERT), patience t (PABEE); DACT has none"
    )
    run.add_argument("--no-early-exit", action="store_true", help="run every layer (no exit, no halting, no bypass)")
    run.add_argument("--json", action="store_true", help="print one JSON trace per input, one per line")
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
            f"note: the {model.config.method} heads for {model.config.task} are untrained, so predictions are arbitrary; "
            f"train them with: python -m training.train --method {model.config.method} --task {model.config.task}"
        )
    return model, note


def read_inputs(args: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    if args.input_file and args.text is not None:
        raise UserError("give either --text or --input-file, not both")
    if args.input_file:
        path = Path(args.input_file)
        if not path.is_file():
            raise UserError(f"input file {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise UserError(f"input file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from error
        rows = [line.split("\t", 1) for line in lines if line.strip()]
        if not rows:
            raise UserError(f"input file {path} has no inputs")
        has_pair = [len(row) == 2 for row in rows]
        if any(has_pair) and not all(has_pair):
            first_odd = has_pair.index(not has_pair[0]) + 1
            raise UserError(f"input file {path}: some lines hold a pair and some do not (see input {first_odd})")
        texts = [row[0] for row in rows]
        return texts, [row[1] for row in rows] if all(has_pair) else None
    if args.text is None:
        raise UserError("nothing to predict: give --text (and --text-pair for pair tasks) or --input-file")
    return [args.text], None if args.text_pair is None else [args.text_pair]


def describe(trace: Trace, index: int) -> str:
    """A short human-readable summary of one trace."""
    if trace.probabilities:
        odds = ", ".join(f"{label} {p:.3f}" for label, p in trace.probabilities.items())
        head = f"[{index}] {trace.prediction}  ({odds})"
    else:
        head = f"[{index}] score {trace.prediction:.3f}"
    parts = [f"layers executed {trace.layers_executed} of {trace.num_layers}"]
    if trace.layers_skipped:
        parts.append(f"skipped {trace.layers_skipped}")
    if trace.exit_layer is not None:
        parts.append(f"exit after layer {trace.exit_layer}")
    parts.append(f"expected speed-up {trace.expected_speedup:.2f}x")
    parts.append(f"{trace.latency_ms:.1f} ms")
    if trace.truncated:
        parts.append("input truncated to the model's limit")
    return head + "\n    " + " · ".join(parts)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts, pairs = read_inputs(args)
    model, note = resolve_model(args)
    traces = model.predict(texts, pairs, threshold=args.threshold, early_exit=not args.no_early_exit, batch_size=args.batch_size)
    if note:
        print(note, file=sys.stderr)
    for index, trace in enumerate(traces, start=1):
        print(trace.to_json() if args.json else describe(trace, index))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a checkpoint on a task's dev set (or the validation split): GLUE metric, layers used, and sweeps.

    python -m training.evaluate --checkpoint assets/checkpoints/mrpc/deebert --json
    python -m training.evaluate --checkpoint DIR --sweep 0,0.05,0.1,0.2,0.3 --out runs/sweeps/mrpc-deebert
    python -m training.evaluate --checkpoint DIR --sweep default --split validation --reference FULL_DIR

For methods whose exit rule only reads values a full-depth run records (``sweeps_in_one_pass``:
DeeBERT's entropies, PABEE's agreement counts) a sweep is one pass over the data, each
threshold's exit read off with the method's own rule. Where the knob changes the path (DPBERT's
planners) each threshold is a pass of its own. Choosing and recording an operating point is
``python -m training.calibration``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from datasets import Dataset

from core.checkpoint import load_checkpoint
from core.csvsafe import write_csv
from core.devices import AUTO, resolve_device
from core.errors import UserError, command_line
from core.model import AdaptiveModel
from core.outcome import Outcome
from training.data import DEFAULT_DATA_DIR, checkpoint_split
from training.metrics import glue_metrics, main_metric
from training.targets import compared_metrics, share_of_full

EVALUATION_BATCH_SIZE = 64


def run(
    model: AdaptiveModel,
    dataset: Dataset,
    threshold: float | None = None,
    early_exit: bool = True,
    progress: bool = False,
    batch_size: int = EVALUATION_BATCH_SIZE,
) -> Outcome:
    """The model over every row of ``dataset``, ``batch_size`` at a time: the engine's tables, in row order."""
    pairs = list(dataset["text_pair"]) if model.config.pair else None
    return model.run_inputs(list(dataset["text"]), pairs, model.settings(threshold, early_exit), batch_size, progress)


def answers(model: AdaptiveModel, outputs: torch.Tensor) -> list[int] | list[float]:
    """Each row's answer as the GLUE metrics take it: the class index, or the score for regression."""
    return outputs.tolist() if model.config.labels is None else outputs.argmax(-1).tolist()


def summarise(
    model: AdaptiveModel,
    labels: list,
    predictions: list,
    executed: torch.Tensor,
    exit_layer: torch.Tensor,
    threshold: float | None,
) -> dict:
    """One operating point: GLUE metrics, average layers, expected speed-up, per-layer frequencies and path spread.

    ``executed`` is the [N, L] table of layers computed per input, ``exit_layer`` each input's
    1-based early exit (0: it ran to the end).
    """
    task, num_layers, count, regression = model.config.task, model.num_layers, len(labels), model.config.labels is None
    metrics, metric_name = glue_metrics(task, predictions, labels, regression), main_metric(task, regression)
    avg_layers = int(executed.sum()) / count
    top_path, top_count = Counter(tuple(row) for row in executed.tolist()).most_common(1)[0]
    result = {
        "task": task,
        "method": model.config.method,
        "threshold": threshold,
        "metric_name": metric_name,
        "metric": metrics[metric_name],
        **metrics,
        "avg_layers": avg_layers,
        "expected_speedup": num_layers / avg_layers if avg_layers else float(num_layers),
        "layer_frequency": [int(ran) / count for ran in executed.sum(0)],
        "top_path": [layer + 1 for layer, ran in enumerate(top_path) if ran],
        "top_path_share": top_count / count,
        "no_layer_share": int((executed.sum(1) == 0).sum()) / count,  # inputs answered without computing any layer
        "examples": count,
    }
    if model.method.exits_early:
        result["exit_frequency"] = [int((exit_layer == layer).sum()) / count for layer in range(1, num_layers + 1)]
    return result


def pct_of_full(result: dict, reference: dict) -> float | None:
    """``result``'s metric as a percentage of the full model's, compared as the targets compare (MRPC: the lower of
    accuracy and F1).
    """
    share = share_of_full(result["task"], result, reference)
    return None if share is None else 100 * share


def evaluate(
    model: AdaptiveModel,
    dataset: Dataset,
    threshold: float | None = None,
    early_exit: bool = True,
    progress: bool = False,
    with_predictions: bool = False,
    batch_size: int = EVALUATION_BATCH_SIZE,
) -> dict:
    """One operating point's summary; ``with_predictions`` adds each input's answer (class index or score) as
    ``predictions``. ``batch_size`` 1 runs each input as a single input runs (onnx-*: the one graph).
    """
    outcome = run(model, dataset, threshold, early_exit, progress, batch_size)
    predictions = answers(model, outcome.outputs)
    result = summarise(
        model, list(dataset["label"]), predictions, outcome.executed, outcome.exit_layer, outcome.settings.threshold
    )
    return result | {"predictions": predictions} if with_predictions else result


def sweep(
    model: AdaptiveModel,
    dataset: Dataset,
    thresholds: list[float] | None = None,
    progress: bool = False,
    with_predictions: bool = False,
) -> list[dict]:
    """Evaluate several knob values (default: the method's own grid); one pass where the method allows it."""
    knob = model.method.knob
    if knob is None:
        raise UserError(f"{model.method.title} has no threshold to sweep: its trade-off is set in training")
    thresholds = list(knob.sweep if thresholds is None else thresholds)
    for threshold in thresholds:
        model.check_threshold(threshold)
    if not model.method.sweeps_in_one_pass:
        return [
            evaluate(model, dataset, threshold, progress=progress, with_predictions=with_predictions)
            for threshold in thresholds
        ]
    outcome = run(model, dataset, early_exit=False, progress=progress)
    numbers = [item.name for item in model.method.layer_fields if item.kind == "number"]
    values = {
        name: outcome.layer_table(name).float() for name in numbers
    }  # the exit rules compare in float32, whatever the precision
    layer_predictions = outcome.layer_table("prediction")
    labels = list(dataset["label"])
    layer_numbers = torch.arange(1, model.num_layers + 1)
    results = []
    for threshold in thresholds:
        exit_layer = model.method.sweep_exits(values, threshold)
        answered_at = torch.where(exit_layer > 0, exit_layer, model.num_layers)
        predictions = layer_predictions.gather(1, (answered_at - 1).unsqueeze(1)).squeeze(1).tolist()
        result = summarise(
            model, labels, predictions, layer_numbers <= answered_at.unsqueeze(1), exit_layer, threshold
        )
        results.append(result | {"predictions": predictions} if with_predictions else result)
    return results


# what a table of operating points shows of each one; tables add their own leading columns (SWEEP_COLUMNS: the
# task and method, training.tradeoff: the checkpoint and its label)
POINT_COLUMNS = [
    "threshold",
    "metric_name",
    "metric",
    "avg_layers",
    "expected_speedup",
    "top_path_share",
    "no_layer_share",
    "layer_frequency",
    "exit_frequency",
]
SWEEP_COLUMNS = ["task", "method", *POINT_COLUMNS]


def sweep_columns(results: list[dict]) -> list[str]:
    """``SWEEP_COLUMNS`` with the metrics a task is compared on beside its main one (MRPC: accuracy and F1)."""
    first = results[0] if results else {}
    compared = compared_metrics(first.get("task", ""), first.get("metric_name", ""))
    at = SWEEP_COLUMNS.index("metric") + 1
    return [*SWEEP_COLUMNS[:at], *(name for name in compared if name in first), *SWEEP_COLUMNS[at:]]


def write_sweep(results: list[dict], out: Path, reference: dict | None = None) -> None:
    """A CSV of the sweep (with each point's per-layer run and exit shares) and an Altair chart of metric against
    average layers.
    """
    import pandas as pd

    from interpret.charts import metric_lines  # Altair: imported only when a chart is written

    out.mkdir(parents=True, exist_ok=True)
    columns = sweep_columns(results)
    rows = [
        {key: json.dumps(r[key]) if isinstance(r.get(key), list) else r.get(key) for key in columns} for r in results
    ]
    table = pd.DataFrame(rows, columns=columns)
    write_csv(table, out / "sweep.csv")
    plotted = ["task", "method", "threshold", "metric_name", "metric", "avg_layers", "expected_speedup"]
    points = table[plotted].assign(kind="sweep")
    if reference is not None:
        points = pd.concat(
            [points, pd.DataFrame([{**{key: reference[key] for key in plotted}, "kind": "full model"}])]
        )
    first = results[0]
    title = f"{first['task']} · {first['method']}: {first['metric_name']} vs layers"
    chart = metric_lines(
        points,
        "avg_layers",
        "metric",
        title,
        series="kind",
        axis_titles=("average layers executed", first["metric_name"]),
    )
    chart.save(str(out / "sweep.html"))


def parse_thresholds(text: str) -> list[float] | None:
    """``default`` (the method's own grid) or comma-separated numbers."""
    if text == "default":
        return None
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise UserError(
            f"--sweep takes 'default' or comma-separated numbers such as 0,0.1,0.2, not {text!r}"
        ) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument(
        "--split",
        choices=["dev", "validation"],
        default="dev",
        help="dev (reported) or the validation rows held out of train (default: %(default)s)",
    )
    parser.add_argument(
        "--threshold", type=float, nargs="*", help="one or more knob values (default: the checkpoint's)"
    )
    parser.add_argument(
        "--sweep", help="knob values to sweep: 'default' (the method's grid) or comma-separated numbers"
    )
    parser.add_argument("--no-early-exit", action="store_true", help="run every layer")
    parser.add_argument("--limit", type=int, help="only the first N rows")
    parser.add_argument("--out", help="folder for the sweep's CSV and chart")
    parser.add_argument("--reference", help="full-model checkpoint to compare with (metric %% of full, chart point)")
    parser.add_argument(
        "--json", action="store_true", help="end with one JSON object (a list of them for several thresholds)"
    )
    parser.add_argument("--device", default=AUTO, help="cpu, cuda, cuda:N, mps or auto (default: the best available)")
    return parser.parse_args(argv)


def describe(result: dict, reference: dict | None) -> str:
    pct = pct_of_full(result, reference) if reference else None
    share = "" if pct is None else f" ({pct:.1f}% of full)"
    threshold = "default" if result["threshold"] is None else f"{result['threshold']:.4g}"
    frequencies = " ".join(f"{f:.2f}" for f in result["layer_frequency"])
    return (
        f"{result['task']} {result['method']} threshold {threshold}: {result['metric_name']} "
        f"{result['metric']:.4f}{share}, "
        f"avg layers {result['avg_layers']:.2f}, expected speed-up {result['expected_speedup']:.2f}x, layer "
        f"frequency [{frequencies}], "
        f"most common path {result['top_path']} ({result['top_path_share']:.0%}), no layer for "
        f"{result['no_layer_share']:.0%}"
    )


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    model = load_checkpoint(args.checkpoint).to(device)
    dataset = checkpoint_split(model.config, args.split, args.data_dir)
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    reference = (
        evaluate(load_checkpoint(args.reference).to(device), dataset, progress=True) if args.reference else None
    )
    if args.sweep:
        results = sweep(model, dataset, parse_thresholds(args.sweep), progress=True)
    elif args.threshold:
        results = [evaluate(model, dataset, threshold, progress=True) for threshold in args.threshold]
    else:
        results = [evaluate(model, dataset, early_exit=not args.no_early_exit, progress=True)]
    if reference:
        for result in results:
            result["metric_pct_of_full"] = pct_of_full(result, reference)
    for result in results:
        print(describe(result, reference))
    if args.out and args.sweep:
        write_sweep(results, Path(args.out), reference)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

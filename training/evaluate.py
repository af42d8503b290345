"""Evaluate a checkpoint on a task's dev set: GLUE metric, layers used, and threshold sweeps.

    python -m training.evaluate --checkpoint assets/checkpoints/mrpc/deebert --json
    python -m training.evaluate --checkpoint DIR --sweep 0,0.05,0.1,0.2,0.3 --out runs/sweeps/mrpc-deebert
    python -m training.evaluate --checkpoint DIR --sweep ... --choose-default --reference FULL_DIR --keep 0.99

A DeeBERT sweep needs one pass over the data: every layer's off-ramp is computed once, and each
threshold's exit is read off the recorded entropies with DeeBERT's own exit rule. A DPBERT
planner threshold changes the path, so each threshold is a pass of its own.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from core.checkpoint import CONFIG_FILE, load_checkpoint
from core.errors import UserError, command_line
from core.methods.deebert import DeeBERT
from core.model import AdaptiveModel
from core.trace import Trace
from training.data import DEFAULT_DATA_DIR, load_split
from training.metrics import MAIN_METRIC, glue_metrics


def run_traces(model: AdaptiveModel, dataset: Dataset, threshold: float | None = None, early_exit: bool = True, batch_size: int = 64, progress: bool = False) -> list[Trace]:
    texts, pairs = list(dataset["text"]), list(dataset["text_pair"]) if model.config.pair else None
    traces = []
    for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc=f"{model.config.method} dev", leave=False):
        chunk_pairs = None if pairs is None else pairs[start : start + batch_size]
        traces += model.predict(texts[start : start + batch_size], chunk_pairs, threshold=threshold, early_exit=early_exit, batch_size=batch_size)
    return traces


def summarise(model: AdaptiveModel, labels: list, predictions: list, executed: list[list[int]], exits: list[int | None], threshold: float | None) -> dict:
    """One operating point: GLUE metrics, average layers, expected speed-up and per-layer frequencies."""
    task, num_layers, count = model.config.task, model.num_layers, len(labels)
    metrics = glue_metrics(task, predictions, labels)
    avg_layers = sum(map(len, executed)) / count
    result = {
        "task": task,
        "method": model.config.method,
        "threshold": threshold,
        "metric_name": MAIN_METRIC[task],
        "metric": metrics[MAIN_METRIC[task]],
        **metrics,
        "avg_layers": avg_layers,
        "expected_speedup": num_layers / avg_layers if avg_layers else float(num_layers),
        "layer_frequency": [sum(layer in layers for layers in executed) / count for layer in range(1, num_layers + 1)],
        "examples": count,
    }
    if model.config.method in ("deebert", "dact"):
        result["exit_frequency"] = [sum(exit_layer == layer for exit_layer in exits) / count for layer in range(1, num_layers + 1)]
    return result


def label_index(model: AdaptiveModel, trace: Trace) -> int | float:
    return trace.prediction if model.config.labels is None else model.config.labels.index(trace.prediction)


def evaluate(model: AdaptiveModel, dataset: Dataset, threshold: float | None = None, early_exit: bool = True, progress: bool = False) -> dict:
    traces = run_traces(model, dataset, threshold, early_exit, progress=progress)
    return summarise(
        model, list(dataset["label"]), [label_index(model, t) for t in traces], [t.layers_executed for t in traces],
        [t.exit_layer for t in traces], traces[0].threshold,
    )


def sweep(model: AdaptiveModel, dataset: Dataset, thresholds: list[float], progress: bool = False) -> list[dict]:
    """Evaluate several thresholds; one pass for DeeBERT, one pass per threshold otherwise."""
    if model.method.threshold_range is None:
        raise UserError(f"{model.config.method} has no threshold to sweep")
    for threshold in thresholds:
        model.check_threshold(threshold)
    if model.config.method != "deebert":
        return [evaluate(model, dataset, threshold, progress=progress) for threshold in thresholds]
    traces = run_traces(model, dataset, early_exit=False, progress=progress)
    entropies = torch.tensor([[step.entropy for step in t.per_layer] for t in traces])
    ramp_predictions = [[model.config.labels.index(step.prediction) for step in t.per_layer] for t in traces]
    results = []
    for threshold in thresholds:
        exits = DeeBERT.exits(entropies[:, :-1], threshold)
        exit_layers = [int(row.nonzero()[0]) + 1 if row.any() else None for row in exits]
        predictions = [ramps[(layer or model.num_layers) - 1] for ramps, layer in zip(ramp_predictions, exit_layers)]
        executed = [list(range(1, (layer or model.num_layers) + 1)) for layer in exit_layers]
        results.append(summarise(model, list(dataset["label"]), predictions, executed, exit_layers, threshold))
    return results


def choose_default(results: list[dict], reference_metric: float, keep: float) -> dict:
    """The fastest operating point whose metric is at least ``keep`` x the reference (else the most accurate)."""
    good = [r for r in results if r["metric"] >= keep * reference_metric]
    if not good:
        return max(results, key=lambda r: r["metric"])
    return max(good, key=lambda r: (r["expected_speedup"], r["metric"]))


def write_sweep(results: list[dict], out: Path, reference: dict | None = None) -> None:
    """A CSV of the sweep and an Altair chart of metric against average layers executed."""
    import altair as alt
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    columns = ["task", "method", "threshold", "metric_name", "metric", "avg_layers", "expected_speedup"]
    table = pd.DataFrame([{key: r[key] for key in columns} for r in results])
    table.to_csv(out / "sweep.csv", index=False)
    points = table.assign(kind="sweep")
    if reference is not None:
        points = pd.concat([points, pd.DataFrame([{**{key: reference[key] for key in columns}, "kind": "full model"}])])
    chart = (
        alt.Chart(points)
        .mark_line(point=True)
        .encode(
            x=alt.X("avg_layers:Q", title="average layers executed"),
            y=alt.Y("metric:Q", title=results[0]["metric_name"], scale=alt.Scale(zero=False)),
            color=alt.Color("kind:N", title=None),
            tooltip=columns,
        )
        .properties(title=f"{results[0]['task']} · {results[0]['method']}: {results[0]['metric_name']} vs layers", width=480, height=300)
    )
    chart.save(str(out / "sweep.html"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--threshold", type=float, nargs="*", help="one or more thresholds (default: the checkpoint's)")
    parser.add_argument("--sweep", help="comma-separated thresholds to sweep")
    parser.add_argument("--no-early-exit", action="store_true", help="run every layer")
    parser.add_argument("--limit", type=int, help="only the first N dev rows")
    parser.add_argument("--out", help="folder for the sweep's CSV and chart")
    parser.add_argument("--reference", help="full-model checkpoint to compare with (metric %% of full, chart point)")
    parser.add_argument("--choose-default", action="store_true", help="store the fastest swept threshold keeping --keep of the reference metric as the checkpoint's default")
    parser.add_argument("--keep", type=float, default=0.99, help="fraction of the reference metric to keep (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object (a list of them for several thresholds)")
    return parser.parse_args(argv)


def describe(result: dict, reference: dict | None) -> str:
    share = f" ({100 * result['metric'] / reference['metric']:.1f}% of full)" if reference else ""
    threshold = "default" if result["threshold"] is None else f"{result['threshold']:.4g}"
    frequencies = " ".join(f"{f:.2f}" for f in result["layer_frequency"])
    return (
        f"{result['task']} {result['method']} threshold {threshold}: {result['metric_name']} {result['metric']:.4f}{share}, "
        f"avg layers {result['avg_layers']:.2f}, expected speed-up {result['expected_speedup']:.2f}x, layer frequency [{frequencies}]"
    )


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    dataset = load_split(model.config.task, "dev", args.data_dir)
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    reference = evaluate(load_checkpoint(args.reference), dataset, progress=True) if args.reference else None
    if args.sweep:
        thresholds = [float(value) for value in args.sweep.split(",")]
        results = sweep(model, dataset, thresholds, progress=True)
    elif args.threshold:
        results = [evaluate(model, dataset, threshold, progress=True) for threshold in args.threshold]
    else:
        results = [evaluate(model, dataset, early_exit=not args.no_early_exit, progress=True)]
    if reference:
        for result in results:
            result["metric_pct_of_full"] = 100 * result["metric"] / reference["metric"]
    for result in results:
        print(describe(result, reference))
    if args.out and args.sweep:
        write_sweep(results, Path(args.out), reference)
    if args.choose_default:
        if not (args.sweep and reference):
            raise UserError("--choose-default needs --sweep and --reference")
        chosen = choose_default(results, reference["metric"], args.keep)
        config_path = Path(args.checkpoint) / CONFIG_FILE
        config = json.loads(config_path.read_text())
        config["threshold"] = chosen["threshold"]
        config["metrics"] = chosen | {"reference_metric": reference["metric"], "chosen_with": f"fastest keeping {args.keep:.0%} of full on dev"}
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"default threshold set to {chosen['threshold']} in {config_path}")
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

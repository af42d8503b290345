"""Compare trained checkpoints on one task: metric against layers, and what each layer's own classifier knows.

    python -m training.tradeoff --checkpoints runs/mrpc/dact-tau* --label-by tau --out assets/results/mrpc-dact-tau
    python -m training.tradeoff --checkpoints runs/mrpc/dpbert-t* --label-by target_skip_rate \\
        --out assets/results/mrpc-dpbert-rate
    python -m training.tradeoff --checkpoints runs/mrpc/deebert --per-layer --out assets/results/mrpc-deebert-layers
    python -m training.tradeoff --checkpoints runs/mrpc/dpbert runs/mrpc/dpbert-soft --sweep \\
        --out assets/results/mrpc-dpbert-soft-vs-rl

The first form evaluates every checkpoint at its own operating point (with ``--sweep``: at every value of its knob
grid) and draws the metric against the average layers executed, one point per checkpoint labelled by a field of its
method config (a training setting such as DACT's tau or DPBERT's target skip rate). With ``--sweep`` and several
checkpoints, ``equal_layers.csv`` sets each point of the first beside the others' metric at the same average layers
(DPBERT's RL against its soft-gate ablation, the paper's Table 2). ``--per-layer`` evaluates each layer's own
prediction as if every input were forced to exit there (DeeBERT's Fig. 4), for methods that report one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.checkpoint import load_checkpoint
from core.csvsafe import write_csv
from core.errors import UserError, command_line
from core.model import AdaptiveModel
from training.data import DEFAULT_DATA_DIR, load_split
from training.evaluate import POINT_COLUMNS, evaluate, run, sweep
from training.metrics import MAIN_METRIC, glue_metrics

COLUMNS = ["checkpoint", "label", *POINT_COLUMNS]


def tradeoff_rows(models: list[AdaptiveModel], dataset, label_by: str | None, with_sweep: bool) -> list[dict]:
    """One row per checkpoint (per knob value with ``with_sweep``), labelled by a method-config field."""
    rows = []
    for model in models:
        label = model.method.config.to_dict().get(label_by) if label_by else Path(model.source).name
        if label_by and label is None:
            raise UserError(
                f"{model.source}: its {model.method.title} config has no field {label_by!r}; fields: "
                f"{', '.join(model.method.config.to_dict())}"
            )
        results = sweep(model, dataset) if with_sweep and model.method.knob is not None else [evaluate(model, dataset)]
        for result in results:
            row = {
                "checkpoint": Path(model.source).name,
                "label": label,
                **{key: result.get(key) for key in POINT_COLUMNS},
            }
            rows.append({key: json.dumps(value) if isinstance(value, list) else value for key, value in row.items()})
    return rows


def at_equal_layers(rows: list[dict]) -> list[dict]:
    """Each point of the first checkpoint beside the other checkpoints' metric at the same average layers.

    The others' sweeps are interpolated linearly in average layers; outside a sweep's range of
    layers the value is left empty rather than extrapolated (the paper's Table 2 compares at equal cost).
    """
    frame = pd.DataFrame(rows)
    names = list(dict.fromkeys(frame["checkpoint"]))
    first, others = names[0], names[1:]
    curves = {name: frame[frame["checkpoint"] == name].sort_values("avg_layers") for name in others}
    table = []
    for _, point in frame[frame["checkpoint"] == first].sort_values("avg_layers").iterrows():
        row = {"avg_layers": point["avg_layers"], "threshold": point["threshold"], first: point["metric"]}
        for name, curve in curves.items():
            layers, metric = curve["avg_layers"].to_numpy(dtype=float), curve["metric"].to_numpy(dtype=float)
            inside = layers.min() <= point["avg_layers"] <= layers.max()
            row[name] = float(np.interp(point["avg_layers"], layers, metric)) if inside else None
        table.append(row)
    return table


def per_layer_rows(model: AdaptiveModel, dataset, label_by: str | None = None) -> list[dict]:
    """Each layer's own prediction scored as if every input exited there; checkpoints named by ``label_by``."""
    if not any(item.name == "prediction" for item in model.method.layer_fields):
        raise UserError(
            f"{model.method.title} has no per-layer prediction to score; try a method with off-ramps or "
            "per-layer classifiers"
        )
    layer_predictions = run(model, dataset, early_exit=False, progress=True).layer_table("prediction")
    labels = list(dataset["label"])
    rows = []
    for layer in range(model.num_layers):
        predictions = layer_predictions[:, layer].tolist()
        metrics = glue_metrics(model.config.task, predictions, labels)
        name = f"{label_by}={model.method.config.to_dict().get(label_by)}" if label_by else Path(model.source).name
        rows.append({"checkpoint": name, "layer": layer + 1, **metrics})
    return rows


def write(rows: list[dict], out: Path, title: str, x: str, y: str) -> None:
    """The rows as CSV and an Altair chart (HTML and PNG)."""
    from interpret.charts import metric_lines  # Altair: imported only when a chart is written

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    write_csv(frame, out / "results.csv")
    chart = metric_lines(frame, x, y, title, series="label" if "label" in frame else None, series_title="setting")
    chart.save(str(out / "chart.html"))
    chart.save(str(out / "chart.png"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.tradeoff", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument(
        "--label-by", help="a method-config field to label each checkpoint by (e.g. tau, target_skip_rate)"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="evaluate each checkpoint at every value of its knob grid"
    )
    parser.add_argument(
        "--per-layer", action="store_true", help="score each layer's own prediction as if every input exited there"
    )
    parser.add_argument("--split", choices=["dev", "validation"], default="dev")
    parser.add_argument("--limit", type=int, help="only the first N rows")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--out", required=True, help="folder for results.csv and chart.html/png")
    return parser.parse_args(argv)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [load_checkpoint(folder) for folder in args.checkpoints]
    tasks = {model.config.task for model in models}
    if len(tasks) != 1:
        raise UserError(
            f"the checkpoints are of different tasks ({', '.join(sorted(tasks))}): compare one task at a time"
        )
    task = tasks.pop()
    dataset = load_split(task, args.split, args.data_dir)
    if args.limit:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    out = Path(args.out)
    if args.per_layer:
        rows = [row for model in models for row in per_layer_rows(model, dataset, args.label_by)]
        metric = MAIN_METRIC[task]
        write(
            rows,
            out,
            f"{task}: each layer's own {metric} when every input exits there ({args.split})",
            "layer",
            metric,
        )
    else:
        rows = tradeoff_rows(models, dataset, args.label_by, args.sweep)
        write(
            rows,
            out,
            f"{task}: {rows[0]['metric_name']} against layers executed ({args.split})",
            "avg_layers",
            "metric",
        )
        if args.sweep and len(models) > 1:
            equal = at_equal_layers(rows)
            write_csv(pd.DataFrame(equal), out / "equal_layers.csv")
            print(pd.DataFrame(equal).to_string(index=False))
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

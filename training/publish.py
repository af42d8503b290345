"""Choose each trained model's operating point on the validation split, copy it to assets/checkpoints, and write the
table.

    python -m training.publish --runs runs

For every task folder in --runs (runs/<task>/<method>): the full model is the reference. Each
adaptive method is calibrated with ``training.calibration`` (its knob grid on the validation rows
held out of train, the fastest point keeping ``training.targets.KEEP`` of the full model there) and the chosen point
is reported on dev. A method whose trade-off is also a training setting (``variants_are_operating_points``:
DACT's tau, DPBERT's target skip rate) has every variant runs/<task>/<method>-* trained in a shipping stage as a
candidate. The sweeps go to
assets/results/, the table to assets/checkpoints/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from core.checkpoint import CONFIG_FILE, SHIPPED_DIR, load_checkpoint, read_config, save_checkpoint, write_config
from core.errors import UserError, command_line
from core.methods import BASELINE, METHODS
from core.model import AdaptiveModel
from training.calibration import Goal, calibrate, check_precisions, record
from training.data import DEFAULT_DATA_DIR, load_split
from training.evaluate import evaluate, write_sweep
from training.targets import (
    KEEP,
    MAX_NO_LAYER_SHARE,
    MAX_TOP_PATH_SHARE,
    MIN_EXPECTED_SPEEDUP,
    AdaptivityFigures,
    compared_metrics,
    compared_text,
    target_misses,
)

RESULTS_DIR = SHIPPED_DIR.parent / "results"


def candidate_folders(run: Path, method: str) -> list[Path]:
    """The trained checkpoints of a method in a task's run folder.

    Its variants too, where they are operating points, but only those trained in a stage that ships (not DPBERT's
    relaxed step toward the rl stage, nor an ablation).
    """
    folders = [run / method]
    if METHODS[method].variants_are_operating_points:
        folders += sorted(run.glob(f"{method}-*"))
    not_shipped = {stage.name for stage in METHODS[method].stages if not stage.ships}
    candidates = []
    for folder in folders:
        if not (folder / CONFIG_FILE).is_file():
            continue
        config = read_config(folder)
        if config.method == method and (config.training or {}).get("stage") not in not_shipped:
            candidates.append(folder)
    return candidates


def ship(folder: Path, target: Path) -> None:
    """Re-save a trained checkpoint into assets: a fully tuned encoder as int8 differences, adapters and heads as they
    are.

    A method that builds on its task's full model (``base_checkpoint``) is pointed at the shipped
    full model beside it, which publish_task ships first.
    """
    model = load_checkpoint(folder, merge_adapters=False)
    if model.config.encoder_weights == "full":
        model.config.encoder_weights = "delta"
    if model.base_folder is not None:
        if model.base_folder != (folder.parent / BASELINE).resolve():
            raise UserError(
                f"{folder} builds on {model.base_folder}, not on its task's {BASELINE} model "
                f"{folder.parent / BASELINE}: it cannot be shipped beside it"
            )
        model.base_folder = (target.parent / BASELINE).resolve()
    if target.exists():
        shutil.rmtree(target)
    save_checkpoint(model, target)


def chosen_setting(chosen: AdaptiveModel, candidates: list[AdaptiveModel]) -> str:
    """The training settings that tell the chosen variant from the other candidates (DACT's ``tau=0.05``).

    Empty for one candidate.
    """
    configs = [model.config.method_config for model in candidates]
    varied = [
        key for key in chosen.config.method_config if len({json.dumps(config.get(key)) for config in configs}) > 1
    ]
    return ", ".join(f"{key}={chosen.config.method_config[key]:g}" for key in varied)


def publish_task(run: Path, data_dir: str, goal: Goal, methods: list[str]) -> None:
    """Ship a task's ``methods``; its full model is re-shipped only when ``methods`` names it (the others build on the
    shipped one).
    """
    target = SHIPPED_DIR / run.name / BASELINE
    if BASELINE in methods or not (target / CONFIG_FILE).is_file():
        ship(run / BASELINE, target)
    reference_model = load_checkpoint(target)  # what users get, int8 differences included
    task = reference_model.config.task
    dev, validation = load_split(task, "dev", data_dir), load_split(task, "validation", data_dir)
    reference = evaluate(reference_model, dev, progress=True)
    checks = check_precisions(reference_model, None, validation, None, goal)  # the full model against itself
    config = read_config(target)
    config.metrics, config.threshold, config.operating_point = (
        reference | {"reference_metric": reference["metric"], "metric_pct_of_full": 100.0},
        None,
        {"precisions": checks},
    )
    write_config(config, target)
    for method in methods:
        candidates = candidate_folders(run, method) if method != BASELINE else []
        if not candidates:
            continue
        staged = [
            SHIPPED_DIR / run.name / f".staging-{folder.name}" for folder in candidates
        ]  # beside the target, so ../full stays right
        for folder, stage_folder in zip(candidates, staged):
            ship(
                folder, stage_folder
            )  # calibrate what users will load: on the shipped full model, in the shipped format
        models = [load_checkpoint(folder) for folder in staged]
        result = calibrate(
            models, reference_model, validation, dev, goal, dev_reference=reference, precision_check=True
        )
        write_sweep(result.points, RESULTS_DIR / f"{run.name}-{method}-validation")
        target = SHIPPED_DIR / run.name / method
        if target.exists():
            shutil.rmtree(target)
        shutil.move(result.model.source, target)
        for folder in staged:
            shutil.rmtree(folder, ignore_errors=True)
        record(target, result, goal)
        config = read_config(target)
        config.operating_point["setting"] = chosen_setting(result.model, models)
        write_config(config, target)
        print(
            f"{task} {method}: threshold {result.threshold} (chosen on validation), dev "
            f"{result.dev['metric_name']} {result.dev['metric']:.4f} "
            f"({percent_text(result.dev['metric_pct_of_full'])} of full), {result.dev['avg_layers']:.2f} "
            f"layers, most common path {result.dev['top_path_share']:.0%}"
        )


def shipped_rows() -> list[dict]:
    """One table row per shipped checkpoint, from its config.json (what it records is what the table says)."""
    rows = []
    recorded = (
        "metric_name",
        "metric",
        "metric_pct_of_full",
        "avg_layers",
        "expected_speedup",
        "top_path_share",
        "no_layer_share",
    )
    for path in sorted(SHIPPED_DIR.glob(f"*/*/{CONFIG_FILE}")):
        config = read_config(path.parent)
        compared = compared_metrics(config.task, config.metrics.get("metric_name", ""))
        rows.append(
            {
                "task": config.task,
                "method": config.method,
                "pooling": config.method_config.get("pooling"),
                "threshold": config.threshold,
                "setting": config.operating_point.get("setting", ""),
                "validation_metric": config.operating_point.get("validation", {}).get("metric"),
                "folder": str(path.parent.relative_to(SHIPPED_DIR.parent.parent)),
                "command": config.training.get("command", ""),
                "compared": {name: config.metrics.get(name) for name in compared},
                **{key: config.metrics.get(key) for key in recorded},
            }
        )
    order = list(METHODS)
    return sorted(rows, key=lambda row: (row["task"], order.index(row["method"])))


def percent_text(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}%"


def row_misses(row: dict) -> list[str]:
    """How far a shipped adaptive point is from the targets on dev (training/targets.py); empty: all met."""
    if row["expected_speedup"] is None or row["top_path_share"] is None or row["no_layer_share"] is None:
        return ["not recorded (publish it again)"]
    share = None if row["metric_pct_of_full"] is None else row["metric_pct_of_full"] / 100
    return target_misses(
        AdaptivityFigures(share, row["expected_speedup"], row["top_path_share"], row["no_layer_share"])
    )


def metric_text(row: dict) -> str:
    """The compared metrics of a row: ``accuracy 0.801 / f1 0.864`` on MRPC, the main metric elsewhere."""
    return compared_text(row["task"], {**row["compared"], "metric_name": row["metric_name"], "metric": row["metric"]})


def write_table(rows: list[dict], goal: Goal) -> None:
    lines = [
        "# Shipped checkpoints",
        "",
        "Trained on this project's CPU machine by `python -m training.ship` (recipes in training/recipes/); "
        "operating points chosen by",
        f"`python -m training.publish` ({goal.describe()}: rows held out of the GLUE training file, never "
        "seen in training), then",
        "reported on the GLUE dev sets below. Expected speed-up is 6 / average layers executed; measured "
        "wall-clock speed-ups are in",
        "assets/benchmarks/. \"% of full\" on MRPC is the lower of its accuracy's and its F1's share of the "
        "full model's.",
        "",
        f"The targets column checks each adaptive point on dev: >= {KEEP:.0%} of the full model, >= "
        f"{MIN_EXPECTED_SPEEDUP:g}x expected speed-up,",
        f"no single layer path for more than {MAX_TOP_PATH_SHARE:.0%} of the inputs, and at most "
        f"{MAX_NO_LAYER_SHARE:.0%} answered with no layer.",
        "",
        "| task | method | pooling | threshold (validation) | dev metric | % of full | avg layers | expected "
        "speed-up | most common path | no layer | targets | checkpoint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        threshold = row.get("setting") or "–" if row["threshold"] is None else f"{row['threshold']:g}"
        targets = "–" if row["method"] == BASELINE else ("; ".join(row_misses(row)) or "met")
        no_layer = percent_text(None if row["no_layer_share"] is None else 100 * row["no_layer_share"], 0)
        lines.append(
            f"| {row['task']} | {row['method']} | {row['pooling']} | {threshold} | {metric_text(row)} | "
            f"{percent_text(row['metric_pct_of_full'])} "
            f"| {row['avg_layers']:.2f} | {row['expected_speedup']:.2f}x | "
            f"{percent_text(None if row['top_path_share'] is None else 100 * row['top_path_share'], 0)} "
            f"| {no_layer} | {targets} | `{row['folder']}` |"
        )
    lines += ["", "## Commands that trained them", ""]
    lines += [f"- {row['task']} {row['method']}: `{row['command']}`" for row in rows]
    lines.append("")
    (SHIPPED_DIR / "README.md").write_text("\n".join(lines))


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default="runs", help="folder of <task>/<method> training outputs")
    parser.add_argument("--tasks", nargs="*", help="task folders to publish (default: all in --runs)")
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=list(METHODS),
        help="methods to publish (default: all; the full model is re-shipped only when named)",
    )
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    args = parser.parse_args(argv)
    goal = Goal()
    runs = sorted(path for path in Path(args.runs).iterdir() if (path / BASELINE / CONFIG_FILE).is_file())
    if args.tasks:
        runs = [path for path in runs if path.name in args.tasks]
    for path in [path for path in runs if read_config(path / BASELINE).training.get("train_split") == "dev"]:
        print(
            f"not published: {path} was trained on its dev rows (an intermediate model), so its dev results "
            "would mean nothing"
        )
        runs.remove(path)
    if not runs:
        raise UserError(
            f"no trained full models under {args.runs}/<task>/{BASELINE}: run python -m training.ship first"
        )
    for run in runs:
        publish_task(run, args.data_dir, goal, args.methods or list(METHODS))
    rows = shipped_rows()
    (SHIPPED_DIR / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows, goal)
    return 0


if __name__ == "__main__":
    sys.exit(main())

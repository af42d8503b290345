"""Choose each trained model's operating point on dev, copy it to assets/checkpoints, and write the table.

    python -m training.publish --runs runs --keep 0.98

For every task folder in --runs: the full model is evaluated as the reference; DeeBERT's entropy
threshold and DPBERT's planner threshold are swept and the fastest point that keeps --keep of the
full model's dev metric becomes the checkpoint's default. DACT has no threshold: its trade-off is
the training weight tau, so every trained variant (runs/<task>/dact, dact-tau0.05, ...) is an
operating point and the same rule picks the one shipped. The sweeps go to assets/results/, the
table to assets/checkpoints/README.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from core.checkpoint import CONFIG_FILE, SHIPPED_DIR, WEIGHTS_FILE, load_checkpoint
from core.errors import UserError, command_line
from training.data import DEFAULT_DATA_DIR, load_split
from training.evaluate import choose_default, evaluate, sweep, write_sweep

SWEEPS = {
    "deebert": [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.62, 0.64, 0.66, 0.68],
    "dpbert": [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7],
}
RESULTS_DIR = SHIPPED_DIR.parent / "results"
METHOD_ORDER = ["full", "deebert", "dact", "dpbert"]


def training_command(training: dict, folder: Path) -> str:
    """The command that trained a checkpoint (rebuilt from its saved arguments for runs that predate recording it)."""
    if training.get("command"):
        return training["command"]
    parts = ["python -m training.train", f"--method {training['method']}", f"--task {training['task']}"]
    if training["method"] == "dpbert":
        parts.append(f"--stage {training['stage']}")
    if training.get("init"):
        parts.append(f"--init {training['init']}")
    parts += [f"--epochs {training['epochs']:g}", f"--lr {training['lr']:g}"]
    if training["method"] == "dact":
        parts.append(f"--tau {training['tau']:g}")
    if training.get("train_limit"):
        parts.append(f"--train-limit {training['train_limit']}")
    return " ".join(parts + [f"--out {folder}"])


def publish_task(run: Path, data_dir: str, keep: float) -> list[dict]:
    reference_model = load_checkpoint(run / "full")
    task = reference_model.config.task
    dev = load_split(task, "dev", data_dir)
    reference = evaluate(reference_model, dev, progress=True)
    rows = []
    for method in METHOD_ORDER:
        candidates = sorted(run.glob("dact*")) if method == "dact" else [run / method]
        candidates = [folder for folder in candidates if (folder / CONFIG_FILE).is_file()]
        if not candidates:
            continue
        if method == "full":
            chosen, folder = reference | {"threshold": None}, run / "full"
        elif method in SWEEPS:
            folder = candidates[0]
            results = sweep(load_checkpoint(folder), dev, SWEEPS[method], progress=True)
            write_sweep(results, RESULTS_DIR / f"{run.name}-{method}", reference)
            chosen = choose_default(results, reference["metric"], keep)
        else:  # DACT: one operating point per trained tau
            results = [evaluate(load_checkpoint(folder), dev, progress=True) | {"checkpoint": folder.name} for folder in candidates]
            chosen = choose_default(results, reference["metric"], keep)
            folder = run / chosen["checkpoint"]
        chosen = chosen | {"reference_metric": reference["metric"], "metric_pct_of_full": 100 * chosen["metric"] / reference["metric"]}
        target = SHIPPED_DIR / run.name / method
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / WEIGHTS_FILE, target / WEIGHTS_FILE)
        config = json.loads((folder / CONFIG_FILE).read_text())
        if method in SWEEPS:
            config["threshold"] = chosen["threshold"]
        rule = f"fastest operating point keeping {keep:.0%} of the full model's dev metric"
        config["metrics"] = chosen | {"operating_point": rule if method != "full" else "all layers"}
        (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        rows.append({"folder": str(target.relative_to(SHIPPED_DIR.parent.parent)), "command": training_command(config["training"], folder), **chosen})
        print(f"{task} {method}: {chosen['metric_name']} {chosen['metric']:.4f} ({chosen['metric_pct_of_full']:.1f}% of full), "
              f"{chosen['avg_layers']:.2f} layers, {chosen['expected_speedup']:.2f}x, threshold {chosen['threshold']}")
    return rows


def write_table(rows: list[dict], keep: float) -> None:
    lines = [
        "# Shipped checkpoints",
        "",
        "All on all-MiniLM-L6-v2 (6 layers) with LoRA adapters (rank 16), trained on this project's CPU machine by",
        "`bash training/ship.sh`, operating points chosen by `python -m training.publish --keep " + f"{keep}` on the GLUE dev sets",
        "(so the dev numbers below are optimistic for the adaptive methods' thresholds). Expected speed-up is",
        "6 / average layers executed; measured wall-clock speed-ups are in the benchmark (assets/benchmarks/).",
        "",
        "| task | method | threshold | dev metric | value | % of full | avg layers | expected speed-up | checkpoint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        threshold = "–" if row["threshold"] is None or row["method"] in ("full", "dact") else f"{row['threshold']:g}"
        lines.append(
            f"| {row['task']} | {row['method']} | {threshold} | {row['metric_name']} | {row['metric']:.4f} | {row['metric_pct_of_full']:.1f}% "
            f"| {row['avg_layers']:.2f} | {row['expected_speedup']:.2f}x | `{row['folder']}` |"
        )
    lines += ["", "## Commands that trained them", ""]
    for row in rows:
        lines.append(f"- {row['task']} {row['method']}: `{row['command']}`")
    lines.append("")
    (SHIPPED_DIR / "README.md").write_text("\n".join(lines))


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs", help="folder of <task>/<method> training outputs")
    parser.add_argument("--tasks", nargs="*", help="task folders to publish (default: all in --runs)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--keep", type=float, default=0.98, help="fraction of the full model's dev metric an operating point must keep")
    args = parser.parse_args(argv)
    runs = sorted(path for path in Path(args.runs).iterdir() if (path / "full" / CONFIG_FILE).is_file())
    if args.tasks:
        runs = [path for path in runs if path.name in args.tasks]
    if not runs:
        raise UserError(f"no trained full models under {args.runs}/<task>/full: run bash training/ship.sh first")
    rows = [row for run in runs for row in publish_task(run, args.data_dir, args.keep)]
    existing = SHIPPED_DIR / "table.json"
    kept = [row for row in (json.loads(existing.read_text()) if existing.is_file() else []) if row["task"] not in {r["task"] for r in rows}]
    rows = sorted(kept + rows, key=lambda row: (row["task"], METHOD_ORDER.index(row["method"])))
    existing.write_text(json.dumps(rows, indent=2) + "\n")
    write_table(rows, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())

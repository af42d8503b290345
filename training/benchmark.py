"""Wall-clock benchmark: every method against the full model, interleaved in one process.

    python -m training.benchmark --task MRPC
    python -m training.benchmark --task RTE --methods deebert dpbert --batch-sizes 1,32 --repeats 3 --limit 200 --profile

Layer counts promise more than clocks deliver (decisions, extra heads and batch bookkeeping cost
time), so this measures both on the same inputs. Every operating point (the full model, each
method at its shipped threshold, and the DeeBERT / DPBERT threshold sweeps of training.publish)
runs input by input in a rotating order after a warm-up, so a noisy machine slows all of them
alike. Only the engine call is timed: inputs are tokenized beforehand. The dev metric of each
operating point comes from training.evaluate on the whole dev set.

Writes to --out (default assets/benchmarks/<task>/): results.csv (one row per method and
operating point, plus the papers' headline figures as rows marked quoted), results.md (tables,
targets, machine), tradeoff.html / tradeoff.png (metric against measured speed-up) and, with
--profile, profile.txt (the top operators per method).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from core.checkpoint import CONFIG_FILE, SHIPPED_DIR, WEIGHTS_FILE, load_checkpoint, shipped_checkpoint
from core.engine import BatchResult, run_batch
from core.errors import UserError, command_line
from core.methods import METHODS, RunSettings
from core.model import AdaptiveModel, length_sorted_batches
from core.tasks import get_task
from training.data import DEFAULT_DATA_DIR, load_split
from training.evaluate import evaluate, sweep
from training.publish import METHOD_ORDER, SWEEPS

DEFAULT_OUT = SHIPPED_DIR.parent / "benchmarks"
OVERHEAD_TARGET = 0.95  # measured / expected speed-up at batch size 1
BATCHED_TARGET = 0.8  # batched speed-up / batched expected speed-up
KEEP_TARGET = 98.0  # % of the full model's metric an operating point must keep ...
SPEEDUP_AIM = 1.5  # ... and the measured speed-up we aim for at the fastest such point
PROFILED_INPUTS = 20

COLUMNS = [
    "source", "task", "method", "threshold", "operating_point", "metric_name", "metric", "metric_pct_of_full",
    "avg_layers", "expected_speedup", "measured_speedup", "overhead_ratio", "p50_ms", "p95_ms",
    "batch_size", "throughput_per_s", "batched_expected_speedup", "batched_speedup", "batched_overhead_ratio",
    "dev_avg_layers", "dev_examples", "timed_inputs", "repeats", "quoted_speedup", "note",
]
REFERENCE_ROWS = [
    {"method": "dpbert", "metric_pct_of_full": 98.0, "quoted_speedup": 1.34,
     "note": "Wu & Zhuo, ECAI 2023: 98% of BERT-base's GLUE score at 1.34x speed-up"},
    {"method": "deebert",
     "note": "Xin et al., ACL 2020: up to ~40% less inference time with minimal quality loss (BERT-base, GLUE)"},
    {"method": "dact",
     "note": "Eyzaguirre et al., 2021: better than DeeBERT and PABEE at low computation (BERT-base, GLUE)"},
]
QUOTED = "quoted (paper, not measured)"
MEASURED = "measured"


@dataclass(frozen=True)
class OperatingPoint:
    """A method at one threshold: one measured row."""

    method: str
    threshold: float | None
    shipped: bool  # the checkpoint's own default threshold

    @property
    def label(self) -> str:
        return self.method if self.threshold is None else f"{self.method}@{self.threshold:g}"


@dataclass
class Timing:
    """What the timed calls of one operating point took, and the layers they executed."""

    per_batch_seconds: list[list[float]]  # [batch][repeat]
    rows: int = 0
    layers: int = 0

    @property
    def total_seconds(self) -> float:
        return sum(map(sum, self.per_batch_seconds))

    @property
    def avg_layers(self) -> float:
        return self.layers / self.rows


@dataclass
class Runner:
    """Calls the engine directly (no tokenizer, no traces) for one operating point."""

    point: OperatingPoint
    model: AdaptiveModel
    settings: RunSettings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = self.model.settings(self.point.threshold)

    def __call__(self, batch: dict[str, torch.Tensor]) -> BatchResult:
        return run_batch(
            self.model.encoder, self.model.method, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), self.settings
        )


def find_checkpoint(task: str, method: str, checkpoints: Path | None) -> Path | None:
    """A method's checkpoint folder: ``--checkpoints/<method>`` or the shipped one, if it exists."""
    if checkpoints is None:
        return shipped_checkpoint(task, method)
    folder = checkpoints / method
    return folder if (folder / CONFIG_FILE).is_file() else None


def missing_checkpoint(task: str, method: str, checkpoints: Path | None) -> UserError:
    """One line naming the folder that was looked in and how to fill it."""
    if checkpoints is not None:
        return UserError(f"no {method} checkpoint in {checkpoints / method}: --checkpoints needs a <method>/ folder with {CONFIG_FILE} and {WEIGHTS_FILE} per method")
    slug = task.replace("-", "").lower()
    return UserError(
        f"no shipped {method} checkpoint for {task} in {SHIPPED_DIR / slug / method}: train it with `bash training/ship.sh {task}` and "
        f"publish it with `python -m training.publish --tasks {slug}`, or pass --checkpoints DIR with <method>/ folders"
    )


def load_models(task: str, methods: list[str] | None, checkpoints: Path | None) -> dict[str, AdaptiveModel]:
    """The full model and each method; without --methods, every adaptive method that has a checkpoint."""
    if methods is None:
        methods = [method for method in METHOD_ORDER if method != "full" and find_checkpoint(task, method, checkpoints)]
    wanted = ["full"] + [method for method in METHOD_ORDER if method in methods and method != "full"]
    models = {}
    for method in wanted:
        folder = find_checkpoint(task, method, checkpoints)
        if folder is None:
            raise missing_checkpoint(task, method, checkpoints)
        model = load_checkpoint(folder)
        if model.config.task != task or model.config.method != method:
            raise UserError(f"{folder} holds a {model.config.task} {model.config.method} checkpoint, not {task} {method}")
        models[method] = model
    if len(models) == 1:
        raise UserError(f"only the full model has a checkpoint for {task}: train a method first (`bash training/ship.sh {task}`)")
    backbones = {model.config.backbone for model in models.values()}
    if len(backbones) > 1:
        raise UserError(f"the checkpoints use different backbones ({', '.join(sorted(backbones))}); the benchmark tokenizes once for all of them")
    return models


def operating_points(models: dict[str, AdaptiveModel]) -> list[OperatingPoint]:
    """Each method's shipped threshold plus, for DeeBERT and DPBERT, training.publish's sweep."""
    points = []
    for method, model in models.items():
        shipped = model.default_threshold()
        thresholds = sorted({*SWEEPS.get(method, []), *([] if shipped is None else [shipped])}) or [None]
        points += [OperatingPoint(method, threshold, threshold == shipped) for threshold in thresholds]
    return points


def dev_metrics(models: dict[str, AdaptiveModel], points: list[OperatingPoint], dev) -> dict[OperatingPoint, dict]:
    """Each point's dev-set summary from training.evaluate (one DeeBERT pass serves its whole sweep)."""
    results = {}
    for method, model in models.items():
        own = [point for point in points if point.method == method]
        if method in SWEEPS:
            summaries = sweep(model, dev, [point.threshold for point in own], progress=True)
        else:
            summaries = [evaluate(model, dev, progress=True)]
        results.update(zip(own, summaries))
    return results


def timing_batches(model: AdaptiveModel, dev, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Length-sorted batches as AdaptiveModel.predict forms them, tokenized ahead of the timed region."""
    texts = list(dev["text"])
    pairs = list(dev["text_pair"]) if model.config.pair else None
    return [
        model.tokenize([texts[i] for i in chosen], None if pairs is None else [pairs[i] for i in chosen])
        for chosen in length_sorted_batches(model.token_counts(texts, pairs), batch_size)
    ]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep Python's garbage collector from landing a pause on whichever method happens to be running."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def time_interleaved(runners: list[Runner], batches: list[dict[str, torch.Tensor]], repeats: int, warmup: int) -> dict[OperatingPoint, Timing]:
    """Run every operating point on every batch, rotating their order from batch to batch."""
    for batch in batches[:warmup]:
        for runner in runners:
            runner(batch)
    timings = {runner.point: Timing([[] for _ in batches]) for runner in runners}
    step = 0
    with collector_paused():
        for _ in range(repeats):
            for index, batch in enumerate(batches):
                shift = step % len(runners)
                step += 1
                for runner in runners[shift:] + runners[:shift]:
                    began = time.perf_counter()
                    result = runner(batch)
                    elapsed = time.perf_counter() - began
                    timing = timings[runner.point]
                    timing.per_batch_seconds[index].append(elapsed)
                    timing.rows += result.batch_size
                    timing.layers += int(result.executed().sum())
    return timings


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or not math.isfinite(denominator) or denominator == 0:
        return None
    return numerator / denominator


def speedups(timing: Timing, full: Timing, num_layers: int) -> tuple[float, float]:
    """(expected from the layers executed, measured from the clock) over the full model on the same calls."""
    return num_layers / timing.avg_layers, full.total_seconds / timing.total_seconds


def latency_columns(timing: Timing, full: Timing, num_layers: int) -> dict:
    """Batch size 1: per-input latency (median over repeats), speed-ups measured and expected."""
    per_input_ms = sorted(1000 * statistics.median(seconds) for seconds in timing.per_batch_seconds)
    expected, measured = speedups(timing, full, num_layers)
    return {
        "avg_layers": timing.avg_layers,
        "expected_speedup": expected,
        "measured_speedup": measured,
        "overhead_ratio": measured / expected,
        "p50_ms": statistics.median(per_input_ms),
        "p95_ms": per_input_ms[min(len(per_input_ms) - 1, math.ceil(0.95 * len(per_input_ms)) - 1)],
    }


def batched_columns(timing: Timing, full: Timing, num_layers: int, batch_size: int) -> dict:
    """A larger batch: throughput and speed-up over the full model at the same batch size."""
    expected, measured = speedups(timing, full, num_layers)
    return {
        "batch_size": batch_size,
        "throughput_per_s": timing.rows / timing.total_seconds,
        "batched_expected_speedup": expected,
        "batched_speedup": measured,
        "batched_overhead_ratio": measured / expected,
    }


def measure(models: dict[str, AdaptiveModel], points: list[OperatingPoint], dev, batch_sizes: list[int], repeats: int, warmup: int) -> dict[OperatingPoint, dict]:
    """The timing columns of every operating point, one interleaved run per batch size."""
    full = models["full"]
    runners = [Runner(point, models[point.method]) for point in points]
    full_point = next(point for point in points if point.method == "full")
    columns: dict[OperatingPoint, dict] = {point: {} for point in points}
    for batch_size in batch_sizes:
        print(f"timing {len(points)} operating points on {len(dev)} inputs at batch size {batch_size}, {repeats} repeats", file=sys.stderr)
        batches = timing_batches(full, dev, batch_size)
        timings = time_interleaved(runners, batches, repeats, warmup if batch_size == 1 else 1)
        for point, timing in timings.items():
            if batch_size == 1:
                columns[point] |= latency_columns(timing, timings[full_point], full.num_layers)
            else:
                columns[point] |= batched_columns(timing, timings[full_point], full.num_layers, batch_size)
    return columns


def measured_rows(task: str, points: list[OperatingPoint], metrics: dict[OperatingPoint, dict], timings: dict[OperatingPoint, dict], timed_inputs: int, repeats: int) -> list[dict]:
    reference = next(metrics[point] for point in points if point.method == "full")
    rows = []
    for point in points:
        summary = metrics[point]
        pct = ratio(summary["metric"], reference["metric"])
        rows.append({
            "source": MEASURED,
            "task": task,
            "method": point.method,
            "threshold": point.threshold,
            "operating_point": "shipped" if point.shipped else "sweep",
            "metric_name": summary["metric_name"],
            "metric": summary["metric"],
            "metric_pct_of_full": None if pct is None else 100 * pct,
            "dev_avg_layers": summary["avg_layers"],
            "dev_examples": summary["examples"],
            "timed_inputs": timed_inputs,
            "repeats": repeats,
            **timings[point],
        })
    return rows


def reference_rows() -> list[dict]:
    return [{"source": QUOTED, "task": "GLUE", "operating_point": "paper", **row} for row in REFERENCE_ROWS]


def target_summary(rows: list[dict]) -> list[str]:
    """Each issue-5 target per method: met, or by how much it was missed."""
    lines = []
    for row in (row for row in rows if row["operating_point"] == "shipped" and row["method"] != "full"):
        name = row["method"] if row["threshold"] is None else f"{row['method']} at threshold {row['threshold']:g}"
        overhead = row.get("overhead_ratio")
        if overhead is not None:
            lines.append(f"- {name}: overhead ratio at batch 1 = {overhead:.3f} (target >= {OVERHEAD_TARGET}): {verdict(overhead, OVERHEAD_TARGET)}")
        batched = row.get("batched_overhead_ratio")
        if batched is not None:
            lines.append(
                f"- {name}: batched speed-up at batch {row['batch_size']} {row['batched_speedup']:.2f}x against an expected "
                f"{row['batched_expected_speedup']:.2f}x, ratio {batched:.3f} (target >= {BATCHED_TARGET}): {verdict(batched, BATCHED_TARGET)}"
            )
    speed_column = "measured_speedup" if any(row.get("measured_speedup") is not None for row in rows) else "batched_speedup"
    for method in dict.fromkeys(row["method"] for row in rows if row["method"] != "full"):
        own = [row for row in rows if row["method"] == method]
        keeping = [row for row in own if row["metric_pct_of_full"] is not None and row["metric_pct_of_full"] >= KEEP_TARGET]
        if not keeping:
            best = max((row["metric_pct_of_full"] for row in own if row["metric_pct_of_full"] is not None), default=None)
            kept = "the full model's metric is 0 or undefined" if best is None else f"the best keeps {best:.1f}%"
            lines.append(f"- {method}: no operating point keeps >= {KEEP_TARGET:g}% of the full metric ({kept}): missed")
            continue
        fastest = max(keeping, key=lambda row: row[speed_column])
        threshold = "" if fastest["threshold"] is None else f" at threshold {fastest['threshold']:g}"
        lines.append(
            f"- {method}: fastest point keeping >= {KEEP_TARGET:g}% of full{threshold} ({fastest['metric_pct_of_full']:.1f}%): "
            f"{speed_column.replace('_speedup', ' speed-up')} {fastest[speed_column]:.2f}x (aim >= {SPEEDUP_AIM}x): {verdict(fastest[speed_column], SPEEDUP_AIM)}"
        )
    return lines


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else f"missed by {target - value:.3f}"


def machine_details() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(task: str, rows: list[dict], machine: dict, targets: list[str], profiled: bool) -> str:
    measured = [row for row in rows if row["source"] == MEASURED]
    quoted = [row for row in rows if row["source"] == QUOTED]
    lines = [
        f"# Benchmark: {task}",
        "",
        f"{measured[0]['timed_inputs']} dev inputs timed ({measured[0]['repeats']} repeats, interleaved), metric on {measured[0]['dev_examples']} dev inputs.",
        "Speed-ups are against the full model on the same inputs in the same run; overhead = measured / expected.",
        "",
        "| method | threshold | point | metric | % of full | avg layers | expected | measured | overhead | p50 ms | p95 ms "
        "| batch | throughput/s | batched expected | batched | batched overhead |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in measured:
        lines.append(
            f"| {row['method']} | {cell(row['threshold'], 2)} | {row['operating_point']} | {row['metric_name']} {cell(row['metric'], 4)} "
            f"| {cell(row['metric_pct_of_full'], 1)} | {cell(row.get('avg_layers'), 2)} | {cell(row.get('expected_speedup'), 2)} "
            f"| {cell(row.get('measured_speedup'), 2)} | {cell(row.get('overhead_ratio'))} | {cell(row.get('p50_ms'), 2)} "
            f"| {cell(row.get('p95_ms'), 2)} | {cell(row.get('batch_size'))} | {cell(row.get('throughput_per_s'), 1)} "
            f"| {cell(row.get('batched_expected_speedup'), 2)} | {cell(row.get('batched_speedup'), 2)} | {cell(row.get('batched_overhead_ratio'))} |"
        )
    lines += [
        "",
        "## Quoted from the papers (not measured here; BERT-base, 12 layers)",
        "",
        "| source | method | % of full | speed-up | claim |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in quoted:
        lines.append(f"| {row['source']} | {row['method']} | {cell(row.get('metric_pct_of_full'), 1)} | {cell(row.get('quoted_speedup'), 2)} | {row['note']} |")
    lines += ["", "## Targets (issue 5)", "", *targets, "", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    if profiled:
        lines += ["", "Where the time goes: profile.txt (torch.profiler, top operators per method)."]
    return "\n".join(lines) + "\n"


def write_chart(rows: list[dict], out: Path) -> None:
    """Metric against measured speed-up, one line per method, the full model as a point."""
    import altair as alt
    import pandas as pd

    measured = pd.DataFrame([row for row in rows if row["source"] == MEASURED])
    speed = "measured_speedup" if measured.get("measured_speedup") is not None and measured["measured_speedup"].notna().any() else "batched_speedup"
    title = "measured speed-up over the full model" + (" (batch 1)" if speed == "measured_speedup" else f" (batch {int(measured['batch_size'].iloc[0])})")
    points = measured.dropna(subset=["metric", speed]).assign(threshold=lambda frame: frame["threshold"].astype(float))
    base = alt.Chart(points).encode(
        x=alt.X(f"{speed}:Q", title=title, scale=alt.Scale(zero=False)),
        y=alt.Y("metric:Q", title=str(measured["metric_name"].iloc[0]), scale=alt.Scale(zero=False)),
        color=alt.Color("method:N", sort=METHOD_ORDER),
        tooltip=["method", "threshold", "operating_point", "metric", "metric_pct_of_full", speed, "expected_speedup", "avg_layers"],
    )
    curves = base.mark_line(point=True).encode(order="threshold:Q")
    shipped = base.transform_filter(alt.datum.operating_point == "shipped").mark_point(size=160, filled=True, shape="diamond")
    layers = [curves, shipped]
    full_metric = float(measured.loc[measured["method"] == "full", "metric"].iloc[0])
    if math.isfinite(full_metric) and full_metric > 0:
        keep_line = pd.DataFrame({"metric": [KEEP_TARGET / 100 * full_metric], "label": [f"{KEEP_TARGET:g}% of full"]})
        layers.append(alt.Chart(keep_line).mark_rule(strokeDash=[4, 4], color="gray").encode(y="metric:Q", tooltip=["label"]))
    chart = alt.layer(*layers).properties(
        title=f"{measured['task'].iloc[0]}: {measured['metric_name'].iloc[0]} vs measured speed-up (diamonds: shipped points; dashed: {KEEP_TARGET:g}% of full)",
        width=520,
        height=320,
    )
    chart.save(str(out / "tradeoff.html"))
    chart.save(str(out / "tradeoff.png"))


def profile(models: dict[str, AdaptiveModel], dev, out: Path) -> None:
    """torch.profiler over a few inputs per method at its shipped threshold: the top operators by own CPU time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    batches = timing_batches(models["full"], dev.select(range(min(PROFILED_INPUTS, len(dev)))), 1)
    sections = []
    for method, model in models.items():
        runner = Runner(OperatingPoint(method, model.default_threshold(), True), model)
        runner(batches[0])
        with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
            for batch in batches:
                runner(batch)
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        sections.append(f"== {runner.point.label}: {len(batches)} inputs at batch size 1 ==\n{table}")
    (out / "profile.txt").write_text("\n\n".join(sections))


def write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    counts = {"batch_size": "Int64", "dev_examples": "Int64", "timed_inputs": "Int64", "repeats": "Int64"}
    pd.DataFrame(rows, columns=COLUMNS).astype(counts).to_csv(path, index=False)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(value) for value in text.split(",") if value.strip()})
    except ValueError:
        raise UserError(f"--batch-sizes takes comma-separated whole numbers such as 1,32, not {text!r}") from None
    if not sizes or sizes[0] < 1 or len([size for size in sizes if size > 1]) > 1:
        raise UserError(f"--batch-sizes takes 1 and/or one larger batch size (such as 1,32), not {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--methods", nargs="+", choices=[method for method in METHODS if method != "full"], help="adaptive methods to run (default: every one with a checkpoint); the full model always runs")
    parser.add_argument("--batch-sizes", default="1,32", help="1 for latency and/or one larger size for throughput (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the timed inputs (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=200, help="dev inputs to time (default: %(default)s); the metric always uses --metric-limit")
    parser.add_argument("--metric-limit", type=int, help="dev inputs for the metric (default: the whole dev set)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed inputs per operating point before timing at batch size 1 (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, which follows OMP_NUM_THREADS)")
    parser.add_argument("--checkpoints", help="folder of <method>/ checkpoints to use instead of the shipped ones")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--out", help="output folder (default: assets/benchmarks/<task>)")
    parser.add_argument("--profile", action="store_true", help=f"also profile {PROFILED_INPUTS} inputs per method with torch.profiler (profile.txt)")
    return parser.parse_args(argv)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    task = get_task(args.task).name
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    for name in ("repeats", "limit", "metric_limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else DEFAULT_OUT / task.replace("-", "").lower()
    models = load_models(task, args.methods, Path(args.checkpoints) if args.checkpoints else None)
    dev = load_split(task, "dev", args.data_dir)
    metric_dev = dev.select(range(min(args.metric_limit, len(dev)))) if args.metric_limit else dev
    timed_dev = dev.select(range(min(args.limit, len(dev))))
    points = operating_points(models)
    metrics = dev_metrics(models, points, metric_dev)
    timings = measure(models, points, timed_dev, batch_sizes, args.repeats, args.warmup)
    rows = measured_rows(task, points, metrics, timings, len(timed_dev), args.repeats)
    targets = target_summary(rows)
    rows += reference_rows()
    machine = machine_details()
    out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        profile(models, timed_dev, out)
    write_csv(rows, out / "results.csv")
    table = markdown(task, rows, machine, targets, args.profile)
    (out / "results.md").write_text(table)
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    write_chart(rows, out)
    print(table)
    print(f"wrote {out}/results.csv, results.md, tradeoff.html, tradeoff.png, machine.json{', profile.txt' if args.profile else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

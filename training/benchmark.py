"""Wall-clock benchmark: every method against the full model, interleaved in one process.

    python -m training.benchmark --task MRPC
    python -m training.benchmark --task RTE --methods deebert dpbert --batch-sizes 1,32 --repeats 3 --limit 200 --profile

Layer counts promise more than clocks deliver (decisions, extra heads and batch bookkeeping cost
time), so this measures both on the same inputs. Every operating point (the full model, each
method at its shipped threshold, and the default grid of each method's knob, ``method.knob.sweep``)
runs input by input in a rotating order after a warm-up, so a noisy machine slows all of them
alike. Only the engine call is timed: inputs are tokenized beforehand. The dev metric of each
operating point comes from training.evaluate on the whole dev set.

Writes to --out (default assets/benchmarks/<task>/): results.csv (one row per method and
operating point, plus the papers' headline figures as rows marked quoted), results.md (tables,
targets, machine), machine.json, tradeoff.html / tradeoff.png (metric against measured speed-up)
and, with --profile, profile.txt (the top operators per method). This module times; the files are
written by training.benchmark_report.
"""

from __future__ import annotations

import argparse
import gc
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
from core.methods import BASELINE, RunSettings, adaptive_methods
from core.model import AdaptiveModel, length_sorted_batches
from core.tasks import get_task
from training.benchmark_report import MEASURED, write_report
from training.data import DEFAULT_DATA_DIR, load_split
from training.evaluate import evaluate, sweep

DEFAULT_OUT = SHIPPED_DIR.parent / "benchmarks"
PROFILED_INPUTS = 20


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
        return run_batch(self.model.encoder, self.model.method, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), self.settings)


def find_checkpoint(task: str, method: str, checkpoints: Path | None) -> Path | None:
    """A method's checkpoint folder: ``--checkpoints/<method>`` or the shipped one, if it exists."""
    if checkpoints is None:
        return shipped_checkpoint(task, method)
    folder = checkpoints / method
    return folder if (folder / CONFIG_FILE).is_file() else None


def missing_checkpoint(task: str, method: str, checkpoints: Path | None) -> UserError:
    """One line naming the folder that was looked in and how to fill it."""
    if checkpoints is not None:
        return UserError(
            f"no {method} checkpoint in {checkpoints / method}: --checkpoints needs a <method>/ folder with {CONFIG_FILE} and {WEIGHTS_FILE} per method"
        )
    slug = task.replace("-", "").lower()
    return UserError(
        f"no shipped {method} checkpoint for {task} in {SHIPPED_DIR / slug / method}: train it with `bash training/ship.sh {task}` and "
        f"publish it with `python -m training.publish --tasks {slug}`, or pass --checkpoints DIR with <method>/ folders"
    )


def load_models(task: str, methods: list[str] | None, checkpoints: Path | None) -> dict[str, AdaptiveModel]:
    """The full model and each method; without --methods, every adaptive method that has a checkpoint."""
    if methods is None:
        methods = [method for method in adaptive_methods() if find_checkpoint(task, method, checkpoints)]
    wanted = [BASELINE] + [method for method in adaptive_methods() if method in methods]
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


def thresholds_of(model: AdaptiveModel) -> list[float | None]:
    """The knob's default grid plus the shipped value (which replaces a grid value it equals up to rounding); no knob: the shipped point."""
    shipped = model.default_threshold()
    knob = model.method.knob
    grid = [] if knob is None else [value for value in knob.sweep if shipped is None or not math.isclose(value, shipped, rel_tol=1e-9, abs_tol=1e-12)]
    return sorted({*grid, *([] if shipped is None else [shipped])}) or [None]


def operating_points(models: dict[str, AdaptiveModel]) -> list[OperatingPoint]:
    """Each method's shipped threshold plus its knob's grid (``method.knob.sweep``), in the order of ``models``."""
    points = []
    for method, model in models.items():
        shipped = model.default_threshold()
        points += [OperatingPoint(method, threshold, threshold == shipped) for threshold in thresholds_of(model)]
    return points


def dev_metrics(models: dict[str, AdaptiveModel], points: list[OperatingPoint], dev) -> dict[OperatingPoint, dict]:
    """Each point's dev-set summary from training.evaluate (one pass serves a whole sweep where the method allows it)."""
    results = {}
    for method, model in models.items():
        own = [point for point in points if point.method == method]
        thresholds = [point.threshold for point in own]
        if model.method.knob is not None and None not in thresholds:
            summaries = sweep(model, dev, thresholds, progress=True)
        else:
            summaries = [evaluate(model, dev, threshold, progress=True) for threshold in thresholds]
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


def measure(
    models: dict[str, AdaptiveModel], points: list[OperatingPoint], dev, batch_sizes: list[int], repeats: int, warmup: int
) -> dict[OperatingPoint, dict]:
    """The timing columns of every operating point, one interleaved run per batch size."""
    full = models[BASELINE]
    runners = [Runner(point, models[point.method]) for point in points]
    full_point = next(point for point in points if point.method == BASELINE)
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


def measured_rows(
    task: str, points: list[OperatingPoint], metrics: dict[OperatingPoint, dict], timings: dict[OperatingPoint, dict], timed_inputs: int, repeats: int
) -> list[dict]:
    reference = next(metrics[point] for point in points if point.method == BASELINE)
    rows = []
    for point in points:
        summary = metrics[point]
        pct = ratio(summary["metric"], reference["metric"])
        rows.append(
            {
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
            }
        )
    return rows


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


def profile(models: dict[str, AdaptiveModel], dev, out: Path) -> None:
    """torch.profiler over a few inputs per method at its shipped threshold: the top operators by own CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batches = timing_batches(models[BASELINE], dev.select(range(min(PROFILED_INPUTS, len(dev)))), 1)
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
    parser.add_argument(
        "--methods", nargs="+", choices=adaptive_methods(), help="adaptive methods to run (default: every one with a checkpoint); the full model always runs"
    )
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
    out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        profile(models, timed_dev, out)
    table = write_report(out, task, rows, machine_details(), args.profile)
    print(table)
    print(f"wrote {out}/results.csv, results.md, tradeoff.html, tradeoff.png, machine.json{', profile.txt' if args.profile else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

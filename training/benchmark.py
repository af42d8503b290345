"""Wall-clock benchmark: every method at every precision against what a user would pick instead, interleaved in one
process.

    python -m training.benchmark --task MRPC
    python -m training.benchmark --task RTE --methods deebert dpbert --precisions fp32,int8 --batch-sizes 1,32 \\
        --repeats 3 --limit 200 --profile

Layer counts promise more than clocks deliver (decisions, extra heads and batch bookkeeping cost
time), so this measures both on the same inputs. Every operating point (each method at its
shipped threshold and at the default grid of its knob, ``method.knob.sweep``, at each of
``--precisions``) and the reference rows (the full model in this engine at fp32, bf16 and int8,
and exported to ONNX Runtime at fp32 and int8) run input by input in a shuffled order after a
warm-up, with the same inputs and threads, so a noisy machine slows all of them alike. Only the
model call is timed: inputs are tokenized beforehand. The shipped points and the reference rows are
also timed end to end at batch size 1, as a user calls them: ``predict`` on one raw input
(tokenization and the trace's answers and paths included) against the tokenizer plus one
``session.run`` of ONNX Runtime's full model. The parity rows put the full model in this
project's ONNX Runtime runtime (``onnx-fp32``, ``onnx-int8``) beside ONNX Runtime's whole-graph
export at the same precision. The dev metric of each point comes from
training.evaluate on the whole dev set (ONNX Runtime: its own pass), and each point's agreement
with the same point in fp32 (share of dev inputs with the same class; regression: a score within
``core.precision.REGRESSION_AGREEMENT``).

Writes to --out (default assets/benchmarks/<task>/): results.csv (one row per method, precision and
operating point, plus the papers' headline figures as rows marked quoted), results.md (tables,
targets, machine), machine.json, tradeoff.html / tradeoff.png (metric against measured speed-up
over the fp32 full model) and, with --profile, profile.txt (the top operators per method and
precision). This module times; the files are written by training.benchmark_report.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

from core.checkpoint import CONFIG_FILE, SHIPPED_DIR, WEIGHTS_FILE, load_checkpoint, shipped_checkpoint
from core.engine import BatchResult, run_batch
from core.errors import UserError, command_line
from core.methods import BASELINE, RunSettings, adaptive_methods
from core.model import AdaptiveModel, length_sorted_batches
from core.precision import BF16, FP32, INT8, ONNX_FP32, ONNX_INT8, PRECISIONS, check_precision
from core.tasks import canonical_task, task_slug
from training.benchmark_report import ENGINE, MEASURED, ONNXRUNTIME, write_report
from training.data import DEFAULT_DATA_DIR, checkpoint_split
from training.evaluate import evaluate, sweep
from training.metrics import agreement, glue_metrics, main_metric
from training.targets import compared_text, share_of_full

DEFAULT_OUT = SHIPPED_DIR.parent / "benchmarks"
PROFILED_INPUTS = 20
REFERENCE_PRECISIONS = (FP32, BF16, INT8)  # the full model in this engine, always measured
# every method's points (bf16 is slow on CPUs without native bf16, onnx-* export first: ask for them)
DEFAULT_PRECISIONS = f"{FP32},{INT8}"
METRIC_BATCH = 64
ORDER_SEED = 0  # the shuffled order of the timed calls, the same in every run
BATCHES_TIMED = 16  # batches the larger batch size times at least, by default: a column of a few is mostly noise


@dataclass(frozen=True)
class OperatingPoint:
    """A method at one threshold and precision, in this engine or (the full model only) in ONNX Runtime.

    One measured row.
    """

    method: str
    threshold: float | None
    shipped: bool  # the checkpoint's own default threshold
    precision: str = FP32
    runtime: str = ENGINE

    @property
    def label(self) -> str:
        name = self.method if self.threshold is None else f"{self.method}@{self.threshold:g}"
        return f"{name} {self.precision}" + ("" if self.runtime == ENGINE else f" ({self.runtime})")

    def same_in(self, precision: str, runtime: str = ENGINE) -> OperatingPoint:
        return OperatingPoint(self.method, self.threshold, self.shipped, precision, runtime)

    @property
    def full_model(self) -> OperatingPoint:
        """The full model this point's overhead is measured against: same precision and runtime."""
        return OperatingPoint(BASELINE, None, True, self.precision, self.runtime)


FP32_FULL = OperatingPoint(BASELINE, None, True, FP32)  # every speed-up is against it ...
INT8_FULL = OperatingPoint(BASELINE, None, True, INT8)  # ... and against it
ORT_INT8_FULL = OperatingPoint(BASELINE, None, True, INT8, ONNXRUNTIME)  # what a user who only wants speed runs


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
    """Calls the runtime directly (no tokenizer, no traces) for one operating point.

    A single input runs as the model's one graph where its precision has one (``AdaptiveModel.one_graph``,
    exported here, before any clock starts), as ``predict`` runs it; batches run through the engine.
    """

    point: OperatingPoint
    model: AdaptiveModel
    settings: RunSettings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = self.model.settings(self.point.threshold)
        if self.model.one_graph is not None:
            self.model.one_graph.session(self.settings)

    def __call__(self, batch: dict[str, torch.Tensor]) -> BatchResult:
        inputs = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), self.settings)
        if self.model.one_graph is not None and batch["input_ids"].shape[0] == 1:
            return self.model.one_graph.run(*inputs)
        return run_batch(self.model.encoder, self.model.method, *inputs)

    def count(self, result: BatchResult) -> tuple[int, int]:
        """(rows, layers executed), read after the clock stopped."""
        return result.batch_size, sum(map(sum, result.paths()[1]))


@dataclass
class OnnxRunner:
    """Calls an ONNX Runtime session of the full model (every layer, by construction)."""

    point: OperatingPoint
    session: object  # training.onnx_reference.OnnxModel
    num_layers: int

    def __call__(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return self.session.run(batch)

    def count(self, result: np.ndarray) -> tuple[int, int]:
        return len(result), len(result) * self.num_layers


@dataclass
class EndToEndRunner:
    """``predict`` on one raw input, as a user calls it: tokenization, the run and the trace (answers and paths)."""

    point: OperatingPoint
    model: AdaptiveModel

    def __call__(self, item: tuple[str, str | None]) -> list:
        return self.model.predict(item[0], item[1], threshold=self.point.threshold, batch_size=1)

    def count(self, result: list) -> tuple[int, int]:
        return 1, len(result[0].layers_executed)


@dataclass
class OnnxEndToEndRunner:
    """The tokenizer and one ``session.run`` of ONNX Runtime's full model: what its user calls for one input."""

    point: OperatingPoint
    session: object  # training.onnx_reference.OnnxModel
    model: AdaptiveModel  # the full model whose tokenizer and length limit the export shares

    def __call__(self, item: tuple[str, str | None]) -> np.ndarray:
        return self.session.run(self.model.tokenize([item[0]], None if item[1] is None else [item[1]]))

    def count(self, result: np.ndarray) -> tuple[int, int]:
        return 1, self.model.num_layers


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
            f"no {method} checkpoint in {checkpoints / method}: --checkpoints needs a <method>/ folder with "
            f"{CONFIG_FILE} and {WEIGHTS_FILE} per method"
        )
    slug = task_slug(task)
    return UserError(
        f"no shipped {method} checkpoint for {task} in {SHIPPED_DIR / slug / method}: train it with `python -m "
        f"training.ship --task {task} --no-publish` and "
        f"publish it with `python -m training.publish --tasks {slug}`, or pass --checkpoints DIR with "
        "<method>/ folders"
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
            raise UserError(
                f"{folder} holds a {model.config.task} {model.config.method} checkpoint, not {task} {method}"
            )
        models[method] = model
    if len(models) == 1:
        raise UserError(
            f"only the full model has a checkpoint for {task}: train a method first "
            f"(`python -m training.ship --task {task}`)"
        )
    backbones = {model.config.backbone for model in models.values()}
    if len(backbones) > 1:
        raise UserError(
            f"the checkpoints use different backbones ({', '.join(sorted(backbones))}); the benchmark "
            "tokenizes once for all of them"
        )
    return models


def thresholds_of(model: AdaptiveModel) -> list[float | None]:
    """The knob's default grid plus the shipped value (which replaces a grid value it equals up to rounding).

    No knob: the shipped point.
    """
    shipped = model.default_threshold()
    knob = model.method.knob
    grid = (
        []
        if knob is None
        else [
            value
            for value in knob.sweep
            if shipped is None or not math.isclose(value, shipped, rel_tol=1e-9, abs_tol=1e-12)
        ]
    )
    return sorted({*grid, *([] if shipped is None else [shipped])}) or [None]


def operating_points(
    models: dict[str, AdaptiveModel], precisions: list[str], onnx: bool = True
) -> list[OperatingPoint]:
    """The reference rows (the full model at fp32, bf16, int8 and in ONNX Runtime), then each method's shipped
    threshold and knob grid at each precision.
    """
    points = [
        OperatingPoint(BASELINE, None, True, precision)
        for precision in PRECISIONS
        if precision in REFERENCE_PRECISIONS or precision in precisions
    ]
    if onnx:  # ONNX Runtime's whole graph, and the adaptive runtime's full model beside it (the parity rows)
        points += [
            OperatingPoint(BASELINE, None, True, precision)
            for precision in (ONNX_FP32, ONNX_INT8)
            if precision not in precisions
        ]
        points += [OperatingPoint(BASELINE, None, True, precision, ONNXRUNTIME) for precision in (FP32, INT8)]
    for method, model in models.items():
        if method == BASELINE:
            continue
        shipped = model.default_threshold()
        for precision in precisions:
            points += [
                OperatingPoint(method, threshold, threshold == shipped, precision)
                for threshold in thresholds_of(model)
            ]
    return points


def engine_models(
    models: dict[str, AdaptiveModel], points: list[OperatingPoint]
) -> dict[tuple[str, str], AdaptiveModel]:
    """Each (method, precision) the points need, converted once from the fp32 checkpoint."""
    needed = dict.fromkeys((point.method, point.precision) for point in points if point.runtime == ENGINE)
    return {(method, precision): models[method].with_precision(precision) for method, precision in needed}


def dataset_batches(model: AdaptiveModel, dataset, batch_size: int) -> list[dict[str, torch.Tensor]]:
    texts = list(dataset["text"])
    pairs = list(dataset["text_pair"]) if model.config.pair else None
    return [
        model.tokenize(texts[start : start + batch_size], None if pairs is None else pairs[start : start + batch_size])
        for start in range(0, len(texts), batch_size)
    ]


def onnx_metrics(session, model: AdaptiveModel, dev) -> dict:
    """The dev summary of an ONNX Runtime session, as training.evaluate gives it for the engine (every layer, by
    construction).
    """
    outputs = np.concatenate([session.run(batch) for batch in dataset_batches(model, dev, METRIC_BATCH)])
    predictions = outputs.tolist() if model.config.labels is None else outputs.argmax(-1).tolist()
    task, regression = model.config.task, model.config.labels is None
    metrics, metric_name = (
        glue_metrics(task, predictions, list(dev["label"]), regression),
        main_metric(task, regression),
    )
    return {
        "metric_name": metric_name,
        "metric": metrics[metric_name],
        **metrics,
        "avg_layers": float(model.num_layers),
        "examples": len(dev),
        "predictions": predictions,
    }


def dev_metrics(
    variants: dict[tuple[str, str], AdaptiveModel],
    sessions: dict[OperatingPoint, object],
    points: list[OperatingPoint],
    dev,
) -> dict[OperatingPoint, dict]:
    """Each point's dev-set summary (one pass serves a whole sweep where the method allows it) and its agreement with
    fp32.
    """
    results = {}
    for (method, precision), model in variants.items():
        own = [
            point
            for point in points
            if point.method == method and point.precision == precision and point.runtime == ENGINE
        ]
        thresholds = [point.threshold for point in own]
        if model.method.knob is not None and None not in thresholds:
            summaries = sweep(model, dev, thresholds, progress=True, with_predictions=True)
        else:
            summaries = [
                evaluate(model, dev, threshold, progress=True, with_predictions=True) for threshold in thresholds
            ]
        results.update(zip(own, summaries))
    full = variants[(BASELINE, FP32)]
    for point, session in sessions.items():
        results[point] = onnx_metrics(session, full, dev)
    regression = full.config.labels is None
    for point, summary in results.items():
        reference = results.get(point.same_in(FP32) if point.runtime == ENGINE else FP32_FULL)
        fp32_itself = point.same_in(FP32) == point
        summary["agreement"] = (
            None
            if fp32_itself or reference is None
            else agreement(summary["predictions"], reference["predictions"], regression)
        )
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


def time_interleaved(
    runners: list, batches: list[dict[str, torch.Tensor]], repeats: int, warmup: int
) -> dict[OperatingPoint, Timing]:
    """Run every operating point on every batch, in a new shuffled order for every batch.

    Shuffled rather than rotated: in a rotation each point always follows the same neighbour, and a call
    right after a multi-threaded torch call runs slower (torch's OpenMP workers are still spinning on the
    cores), which would slow the ONNX Runtime points that happen to sit after torch points every time.
    """
    for batch in batches[:warmup]:
        for runner in runners:
            runner(batch)
    timings = {runner.point: Timing([[] for _ in batches]) for runner in runners}
    order = random.Random(ORDER_SEED)
    with collector_paused():
        for _ in range(repeats):
            for index, batch in enumerate(batches):
                for runner in order.sample(runners, len(runners)):
                    began = time.perf_counter()
                    result = runner(batch)
                    elapsed = time.perf_counter() - began
                    timing = timings[runner.point]
                    timing.per_batch_seconds[index].append(elapsed)
                    rows, layers = runner.count(result)
                    timing.rows += rows
                    timing.layers += layers
    return timings


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or not math.isfinite(denominator) or denominator == 0:
        return None
    return numerator / denominator


def against(timings: dict[OperatingPoint, Timing], point: OperatingPoint, reference: OperatingPoint) -> float | None:
    """How many times faster ``point`` ran than ``reference`` on the same calls.

    None if the reference was not timed.
    """
    return ratio(timings[reference].total_seconds, timings[point].total_seconds) if reference in timings else None


def latency_columns(timings: dict[OperatingPoint, Timing], point: OperatingPoint, num_layers: int) -> dict:
    """Batch size 1: per-input latency (median over repeats).

    Speed-ups over the fp32 and int8 full models and over the full model at the same precision.
    """
    timing = timings[point]
    per_input_ms = sorted(1000 * statistics.median(seconds) for seconds in timing.per_batch_seconds)
    expected = num_layers / timing.avg_layers
    own = against(timings, point, point.full_model) if point.runtime == ENGINE else None
    return {
        "avg_layers": timing.avg_layers,
        "expected_speedup": expected,
        "measured_speedup": against(timings, point, FP32_FULL),
        "speedup_vs_int8_full": against(timings, point, INT8_FULL),
        "speedup_vs_full_same_precision": own,
        "overhead_ratio": ratio(own, expected),
        "p50_ms": statistics.median(per_input_ms),
        "p95_ms": per_input_ms[min(len(per_input_ms) - 1, math.ceil(0.95 * len(per_input_ms)) - 1)],
    }


def end_to_end_columns(timings: dict[OperatingPoint, Timing], point: OperatingPoint) -> dict:
    """``predict`` on one raw input (ONNX Runtime: tokenizer and ``session.run``): median latency and speed-ups."""
    per_input_ms = [1000 * statistics.median(seconds) for seconds in timings[point].per_batch_seconds]
    return {
        "e2e_p50_ms": statistics.median(per_input_ms),
        "e2e_speedup": against(timings, point, FP32_FULL),
        "e2e_speedup_vs_ort_int8": against(timings, point, ORT_INT8_FULL),
    }


def batched_columns(
    timings: dict[OperatingPoint, Timing], point: OperatingPoint, num_layers: int, batch_size: int
) -> dict:
    """A larger batch: throughput and speed-ups over the fp32 and int8 full models at the same batch size."""
    timing = timings[point]
    expected = num_layers / timing.avg_layers
    own = against(timings, point, point.full_model) if point.runtime == ENGINE else None
    return {
        "batch_size": batch_size,
        "throughput_per_s": timing.rows / timing.total_seconds,
        "batched_expected_speedup": expected,
        "batched_speedup": against(timings, point, FP32_FULL),
        "batched_speedup_vs_int8_full": against(timings, point, INT8_FULL),
        "batched_overhead_ratio": ratio(own, expected),
    }


def runners_for(
    points: list[OperatingPoint],
    variants: dict[tuple[str, str], AdaptiveModel],
    sessions: dict[OperatingPoint, object],
    num_layers: int,
) -> list:
    return [
        Runner(point, variants[(point.method, point.precision)])
        if point.runtime == ENGINE
        else OnnxRunner(point, sessions[point], num_layers)
        for point in points
    ]


def measure(
    variants: dict[tuple[str, str], AdaptiveModel],
    sessions: dict[OperatingPoint, object],
    points: list[OperatingPoint],
    dev,
    batch_sizes: list[int],
    repeats: int,
    warmup: int,
    batched_dev,
) -> dict[OperatingPoint, dict]:
    """The timing columns of every operating point, one interleaved run per batch size.

    Batch size 1 times ``dev``; the larger batch size times ``batched_dev``, which should hold enough
    batches for a stable median.
    """
    full = variants[(BASELINE, FP32)]
    runners = runners_for(points, variants, sessions, full.num_layers)
    columns: dict[OperatingPoint, dict] = {point: {} for point in points}
    for batch_size in batch_sizes:
        inputs = dev if batch_size == 1 else batched_dev
        print(
            f"timing {len(points)} operating points on {len(inputs)} inputs at batch size {batch_size}, "
            f"{repeats} repeats",
            file=sys.stderr,
        )
        batches = timing_batches(full, inputs, batch_size)
        timings = time_interleaved(runners, batches, repeats, warmup if batch_size == 1 else 1)
        for point in points:
            if batch_size == 1:
                columns[point] |= latency_columns(timings, point, full.num_layers)
            else:
                columns[point] |= batched_columns(timings, point, full.num_layers, batch_size) | {
                    "batched_inputs": len(inputs)
                }
    if 1 in batch_sizes:
        shipped = [point for point in points if point.shipped]
        print(f"timing {len(shipped)} shipped points end to end (predict on one raw input)", file=sys.stderr)
        pairs = list(dev["text_pair"]) if full.config.pair else [None] * len(dev)
        runners = [
            EndToEndRunner(point, variants[(point.method, point.precision)])
            if point.runtime == ENGINE
            else OnnxEndToEndRunner(point, sessions[point], full)
            for point in shipped
        ]
        timings = time_interleaved(runners, list(zip(dev["text"], pairs)), repeats, warmup)
        for point in shipped:
            columns[point] |= end_to_end_columns(timings, point)
    return columns


def measured_rows(
    task: str,
    points: list[OperatingPoint],
    metrics: dict[OperatingPoint, dict],
    timings: dict[OperatingPoint, dict],
    timed_inputs: int,
    repeats: int,
) -> list[dict]:
    reference = metrics[FP32_FULL]
    rows = []
    for point in points:
        summary = metrics[point]
        pct = share_of_full(task, summary, reference)
        rows.append(
            {
                "source": MEASURED,
                "task": task,
                "method": point.method,
                "precision": point.precision,
                "runtime": point.runtime,
                "threshold": point.threshold,
                "operating_point": "shipped" if point.shipped else "sweep",
                "metric_name": summary["metric_name"],
                "metric": summary["metric"],
                "compared_metrics": compared_text(task, summary),
                "metric_pct_of_full": None if pct is None else 100 * pct,
                "agreement": summary["agreement"],
                "no_layer_share": summary.get("no_layer_share", 0.0),
                "dev_avg_layers": summary["avg_layers"],
                "dev_examples": summary["examples"],
                "timed_inputs": timed_inputs,
                "repeats": repeats,
                **timings[point],
            }
        )
    return rows


def onnxruntime_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "not installed"
    return onnxruntime.__version__


def machine_details() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def profile(variants: dict[tuple[str, str], AdaptiveModel], precisions: list[str], dev, out: Path) -> None:
    """torch.profiler over a few inputs per method and precision at its shipped threshold.

    The top operators by own CPU time.
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batches = timing_batches(variants[(BASELINE, FP32)], dev.select(range(min(PROFILED_INPUTS, len(dev)))), 1)
    sections = []
    for (method, precision), model in variants.items():
        if precision not in precisions and method != BASELINE:
            continue
        runner = Runner(OperatingPoint(method, model.default_threshold(), True, precision), model)
        runner(batches[0])
        with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
            for batch in batches:
                runner(batch)
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        sections.append(f"== {runner.point.label}: {len(batches)} inputs at batch size 1 ==\n{table}")
    (out / "profile.txt").write_text("\n\n".join(sections))


def onnx_sessions(full: AdaptiveModel, folder: Path) -> dict[OperatingPoint, object]:
    """The full model exported to ONNX Runtime, fp32 and int8.

    The sessions use torch's thread count and do not spin.
    """
    from core.onnx_layers import quantize_onnx
    from training.onnx_reference import OnnxModel, export_full_model

    print("exporting the full model to ONNX Runtime (fp32, int8)", file=sys.stderr)
    exported = export_full_model(full, folder)
    quantized = quantize_onnx(exported, folder / "full-int8.onnx")
    threads = torch.get_num_threads()
    return {
        OperatingPoint(BASELINE, None, True, precision, ONNXRUNTIME): OnnxModel(path, threads)
        for precision, path in ((FP32, exported), (INT8, quantized))
    }


def parse_precisions(text: str) -> list[str]:
    precisions = [check_precision(value.strip()) for value in text.split(",") if value.strip()]
    if not precisions:
        raise UserError(f"--precisions takes a comma-separated list of {', '.join(PRECISIONS)}, not {text!r}")
    return [precision for precision in PRECISIONS if precision in precisions]


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(value) for value in text.split(",") if value.strip()})
    except ValueError:
        raise UserError(f"--batch-sizes takes comma-separated whole numbers such as 1,32, not {text!r}") from None
    if not sizes or sizes[0] < 1 or len([size for size in sizes if size > 1]) > 1:
        raise UserError(f"--batch-sizes takes 1 and/or one larger batch size (such as 1,32), not {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=adaptive_methods(),
        help="adaptive methods to run (default: every one with a checkpoint); the full model always runs",
    )
    parser.add_argument(
        "--precisions",
        default=DEFAULT_PRECISIONS,
        help=f"precisions of every method's points, from {', '.join(PRECISIONS)} (default: %(default)s); the full "
        "model always runs at fp32, bf16 and int8",
    )
    parser.add_argument(
        "--no-onnxruntime",
        action="store_true",
        help="leave out the ONNX Runtime reference rows (fp32 and int8 full model)",
    )
    parser.add_argument(
        "--batch-sizes",
        default="1,32",
        help="1 for latency and/or one larger size for throughput (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="passes over the timed inputs (default: %(default)s)")
    parser.add_argument(
        "--limit",
        type=int,
        default=200,
        help="dev inputs to time (default: %(default)s); the metric always uses --metric-limit",
    )
    parser.add_argument(
        "--batched-limit",
        type=int,
        help=f"dev inputs to time at the larger batch size (default: the larger of --limit and "
        f"{BATCHES_TIMED} batches, capped at the dev set): a column of a few batches is mostly noise",
    )
    parser.add_argument("--metric-limit", type=int, help="dev inputs for the metric (default: the whole dev set)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="untimed inputs per operating point before timing at batch size 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's own, which follows OMP_NUM_THREADS)"
    )
    parser.add_argument("--checkpoints", help="folder of <method>/ checkpoints to use instead of the shipped ones")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--out", help="output folder (default: assets/benchmarks/<task>)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"also profile {PROFILED_INPUTS} inputs per method with torch.profiler (profile.txt)",
    )
    return parser.parse_args(argv)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    task = canonical_task(args.task)
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    for name in ("repeats", "limit", "batched_limit", "metric_limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = parse_precisions(args.precisions)
    out = Path(args.out) if args.out else DEFAULT_OUT / task_slug(task)
    models = load_models(task, args.methods, Path(args.checkpoints) if args.checkpoints else None)
    dev = checkpoint_split(models[BASELINE].config, "dev", args.data_dir)
    metric_dev = dev.select(range(min(args.metric_limit, len(dev)))) if args.metric_limit else dev
    timed_dev = dev.select(range(min(args.limit, len(dev))))
    batched_limit = args.batched_limit or max(args.limit, BATCHES_TIMED * batch_sizes[-1])
    batched_dev = dev.select(range(min(batched_limit, len(dev))))
    points = operating_points(models, precisions, onnx=not args.no_onnxruntime)
    variants = engine_models(models, points)
    with tempfile.TemporaryDirectory(prefix="onnx-reference-") as folder:
        sessions = {} if args.no_onnxruntime else onnx_sessions(models[BASELINE], Path(folder))
        metrics = dev_metrics(variants, sessions, points, metric_dev)
        timings = measure(variants, sessions, points, timed_dev, batch_sizes, args.repeats, args.warmup, batched_dev)
    rows = measured_rows(task, points, metrics, timings, len(timed_dev), args.repeats)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        profile(variants, precisions, timed_dev, out)
    table = write_report(out, task, rows, machine_details(), args.profile)
    print(table)
    print(
        f"wrote {out}/results.csv, results.md, tradeoff.html, tradeoff.png, "
        f"machine.json{', profile.txt' if args.profile else ''}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

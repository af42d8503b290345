"""What the project promises of a shipped model, declared once.

Calibration, publish, the benchmark and the tests read it here.

An adaptive operating point counts as adaptive when it keeps most of its full model's metric,
saves layers, sends inputs down different paths and answers (almost) no input without running a
layer. "Keeps" compares every metric in ``COMPARED_METRICS`` and takes the lowest share: on MRPC
F1 alone would hide a model that answers the majority class ("equivalent") for everything, which
already scores most of the full model's F1, so MRPC compares accuracy and F1 both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

KEEP = 0.98  # the share of the full model's metric an operating point must keep
MIN_EXPECTED_SPEEDUP = 1.5  # layers of the full model / average layers executed
BEST_METHOD_SPEEDUP = 2.0  # what the best method of a task should reach at KEEP
MAX_TOP_PATH_SHARE = 0.70  # no single layer path for more of the inputs than this
MAX_NO_LAYER_SHARE = 0.05  # inputs answered without executing any layer
PRECISION_NOISE = 0.001  # share of full a faster precision may lose below an fp32 point that misses KEEP already

# speed, measured by the benchmark (never asserted in tests)
OVERHEAD_RATIO = {
    "fp32": 0.95,
    "int8": 0.90,
}  # measured / expected speed-up at batch 1, against the same precision's full
BATCHED_OVERHEAD_RATIO = 0.90  # the same at the batched size
HEADLINE_VS_FP32 = 3.0  # the best adaptive point keeping KEEP, at batch 1, over the PyTorch fp32 full model
HEADLINE_VS_ORT_INT8 = 1.5  # ... and over ONNX Runtime's whole-graph int8 full model
BATCHED_VS_ORT_INT8 = 1.2  # ... and over that at the batched size
RUNTIME_PARITY = 0.95  # the adaptive runtime's full model at int8 against ONNX Runtime's whole graph, same precision

COMPARED_METRICS = {"MRPC": ("accuracy", "f1")}  # tasks whose main metric alone can hide a majority-class answer


def overhead_target(precision: str) -> float:
    """The batch-1 overhead ratio a precision must reach: int8 layers cost less, so the heads weigh more."""
    return OVERHEAD_RATIO["int8"] if "int8" in precision else OVERHEAD_RATIO["fp32"]


def compared_metrics(task: str, main_metric: str) -> tuple[str, ...]:
    """The metrics whose share of the full model's is compared on ``task`` (its main metric, unless listed above)."""
    return COMPARED_METRICS.get(task, (main_metric,))


def share_of_full(task: str, metrics: Mapping[str, float], reference: Mapping[str, float]) -> float | None:
    """The lowest share of the reference's compared metrics that ``metrics`` keeps (1.0 = as good).

    None without a usable reference.
    """
    shares = []
    for name in compared_metrics(task, str(metrics["metric_name"])):
        if name not in metrics or not reference.get(name):
            return None
        shares.append(metrics[name] / reference[name])
    return min(shares)


def compared_text(task: str, metrics: Mapping[str, object]) -> str:
    """The compared metrics as text: ``accuracy 0.8010 / f1 0.8640`` on MRPC, the main metric elsewhere."""
    names = [name for name in compared_metrics(task, str(metrics["metric_name"])) if metrics.get(name) is not None]
    return (
        " / ".join(f"{name} {metrics[name]:.4f}" for name in names)
        or f"{metrics['metric_name']} {metrics['metric']:.4f}"
    )


def compared_value(task: str, metrics: Mapping[str, float]) -> float:
    """One number to rank a task's models by: the lowest of its compared metrics (MRPC: min(accuracy, F1))."""
    return min(metrics[name] for name in compared_metrics(task, str(metrics["metric_name"])) if name in metrics)


@dataclass(frozen=True)
class AdaptivityFigures:
    """What a shipped point's targets are checked on, from its dev evaluation."""

    share_of_full: float | None
    expected_speedup: float
    top_path_share: float
    no_layer_share: float


def target_misses(figures: AdaptivityFigures) -> list[str]:
    """Each missed target with its value and the distance to it; empty when all are met."""
    misses = []
    if figures.share_of_full is None or figures.share_of_full < KEEP:
        kept = "n/a" if figures.share_of_full is None else f"{100 * figures.share_of_full:.1f}%"
        gap = "" if figures.share_of_full is None else f" ({100 * (figures.share_of_full - KEEP):+.1f} pt)"
        misses.append(f"keeps {kept}{gap}")
    if figures.expected_speedup < MIN_EXPECTED_SPEEDUP:
        misses.append(f"{figures.expected_speedup:.2f}x ({figures.expected_speedup - MIN_EXPECTED_SPEEDUP:+.2f}x)")
    if figures.top_path_share > MAX_TOP_PATH_SHARE:
        misses.append(
            f"one path {figures.top_path_share:.0%} ({100 * (figures.top_path_share - MAX_TOP_PATH_SHARE):+.0f}%)"
        )
    if figures.no_layer_share > MAX_NO_LAYER_SHARE:
        misses.append(
            f"no layer for {figures.no_layer_share:.0%} ({100 * (figures.no_layer_share - MAX_NO_LAYER_SHARE):+.0f}%)"
        )
    return misses

"""Precision as a run option of every method: ``fp32`` (default), ``bf16``, ``int8``, ``onnx-fp32`` or ``onnx-int8``.

- ``bf16``: every weight and activation in bfloat16 (``module.to(torch.bfloat16)``); the heads'
  logits are turned back to fp32 before any decision (``PooledHead.logits``), so thresholds
  compare fp32 numbers. On CPUs without native bf16 (no AVX512-BF16 / AMX) this is much slower
  than fp32; on GPUs and CPUs with it, faster (README Results).
- ``int8``: dynamic quantization of the linear layers of the encoder's transformer layers and of
  the heads (every ``PooledHead``: the final head, DeeBERT's and PABEE's off-ramps, DACT's
  per-layer classifiers): int8 weights with one scale per output channel, activations quantized
  per call, int32 accumulation (PyTorch's fbgemm/x86 kernels). Embeddings, layer norms,
  attention's own matmuls and the one-output planners and halting units stay fp32: quantizing a
  384-weight unit saves nothing and moves the decisions it makes. CPU only; no gradients (the
  quantized layers are inference kernels).
- ``onnx-fp32`` / ``onnx-int8``: each transformer layer exported to ONNX and run as its own ONNX
  Runtime session (``core/onnx_layers.py``; int8: ONNX Runtime's dynamic quantization of the
  layer's MatMuls, per channel), with the embeddings, the layer loop and every decision in
  PyTorch between the calls; ``onnx-int8`` quantizes the heads as ``int8`` does. CPU only, no
  gradients; converting exports six small graphs (seconds per layer). At batch size 1 the whole
  model runs instead as one graph with the decisions inside it as ONNX ``If`` nodes
  (``core/onnx_graph.py``), exported (and for int8 quantized the same way) on the first such call:
  one session call per input. Decisions that read a nearly constant state ([CLS] in the early
  layers of a mean-pooled backbone, standardised by DPBERT's planners) amplify the small
  differences between the two int8 exports' kernels, so their paths can differ; the validation
  check behind ``fastest`` runs onnx precisions at batch size 1, as a single input runs.

``fastest`` is not a precision but a choice among them: the first of ``SPEED_ORDER`` (for the
model's device) whose validation check, recorded in the checkpoint's ``operating_point.precisions``
by ``training.calibration``, still keeps the operating point's rule (share of the full model's
metric, inputs answered with no layer); fp32 where none does or nothing is recorded. The order is
the benchmark's at batch 1 on this project's CPU (README Results): ONNX Runtime int8 sessions,
PyTorch int8, the onnx-fp32 one graph, fp32.

Why not torchao: ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of torchao,
but torchao's int8 dynamic-activation config runs far slower than fp32 on an AVX2 CPU in eager
mode (its CPU path has no int8 kernel without ``torch.compile``; NOTES.md), and its int8
weight-only config is no faster than fp32. The fbgemm kernels behind ``quantize_dynamic`` are the
fast int8 path PyTorch 2.13 (pinned) has on x86 CPUs, so they are used here, with the
deprecation warnings silenced at this one call site.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from core.backbone import Encoder
from core.errors import UserError
from core.heads import PooledHead

FP32 = "fp32"
BF16 = "bf16"
INT8 = "int8"
ONNX_FP32 = "onnx-fp32"
ONNX_INT8 = "onnx-int8"
PRECISIONS = (FP32, BF16, INT8, ONNX_FP32, ONNX_INT8)
ONNX = (ONNX_FP32, ONNX_INT8)  # batch size 1 runs as one graph with the decisions inside (core/onnx_graph.py)
CPU_ONLY = (INT8, *ONNX)
FASTEST = "fastest"
CHOICES = (*PRECISIONS, FASTEST)  # what a user may ask for
SPEED_ORDER = {"cpu": (ONNX_INT8, INT8, ONNX_FP32, FP32), "cuda": (BF16, FP32)}  # fastest first, per device type
DESCRIPTIONS = {
    FP32: "fp32 (full precision)",
    BF16: "bf16 (bfloat16 weights and activations)",
    INT8: "int8 (dynamic quantization of the encoder's and heads' linear layers; CPU)",
    ONNX_FP32: "onnx-fp32 (each transformer layer an ONNX Runtime session, decisions in PyTorch between them; CPU)",
    ONNX_INT8: "onnx-int8 (each transformer layer an ONNX Runtime int8 session, int8 heads; CPU)",
    FASTEST: "fastest (per checkpoint: the fastest precision that keeps its validation metric)",
}


# a score "agrees" with fp32's when they differ by at most this (STS-B's scale is 0-5); classes agree when equal
REGRESSION_AGREEMENT = 0.1


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``fastest`` picked for one checkpoint, and what its validation check said about it."""

    precision: str
    agreement: float | None  # share of validation inputs answered as fp32 answers them (None: fp32 itself)
    recorded: bool  # False: the checkpoint records no validation check per precision, so fp32 was kept
    regression: bool = False  # scores agree within REGRESSION_AGREEMENT, not exactly

    def describe(self) -> str:
        if not self.recorded:
            return f"{FP32} (no validation check per precision is recorded)"
        if self.agreement is None:
            return f"{self.precision} (no faster precision keeps the validation metric)"
        if self.regression:
            return (
                f"{self.precision} (scores {100 * self.agreement:.1f}% of validation inputs within "
                f"{REGRESSION_AGREEMENT:g} of {FP32}'s score)"
            )
        return f"{self.precision} (answers {100 * self.agreement:.1f}% of validation inputs as {FP32} does)"


def faster_precisions(device: torch.device | str) -> tuple[str, ...]:
    """The precisions faster than fp32 on ``device``'s type, fastest first (``SPEED_ORDER`` without fp32)."""
    return tuple(precision for precision in SPEED_ORDER.get(torch.device(device).type, ()) if precision != FP32)


def fastest_precision(operating_point: dict, device: torch.device | str, regression: bool = False) -> PrecisionChoice:
    """The first of ``faster_precisions`` whose recorded validation check keeps the operating point, else fp32.

    ``regression``: the model answers scores (the agreement is then within ``REGRESSION_AGREEMENT``).
    """
    checks = operating_point.get("precisions") or {}
    if not checks:
        return PrecisionChoice(FP32, None, recorded=False, regression=regression)
    keeping = [precision for precision in faster_precisions(device) if checks.get(precision, {}).get("keeps")]
    if not keeping:
        return PrecisionChoice(FP32, None, recorded=True, regression=regression)
    return PrecisionChoice(keeping[0], checks[keeping[0]].get("agreement"), recorded=True, regression=regression)


def check_precision(precision: str, choices: tuple[str, ...] = PRECISIONS) -> str:
    if precision not in choices:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(choices)}")
    return precision


def check_device(precision: str, device: torch.device | str) -> None:
    """int8's and ONNX Runtime's kernels here are CPU kernels: refuse another device with a one-line reason."""
    if precision in CPU_ONLY and torch.device(device).type != "cpu":
        raise UserError(
            f"{precision} runs on the CPU only (CPU kernels); use --device cpu, or --precision fp32/bf16 on {device}"
        )


def quantize_linears(module: nn.Module) -> None:
    """Replace every ``nn.Linear`` inside ``module`` by its int8 dynamic-quantized version, in place.

    One weight scale per output channel.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the eager quantization API is deprecated; see the module docstring for why it is used
        quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def apply_precision(encoder: Encoder, method: nn.Module, precision: str) -> Encoder:
    """Convert an fp32 encoder and method to ``precision`` (in place where possible); returns the encoder to use."""
    check_precision(precision)
    check_device(precision, next(encoder.parameters()).device)
    if precision == BF16:
        encoder.to(torch.bfloat16)
        method.to(torch.bfloat16)
    if precision in (INT8, ONNX_INT8):
        for head in [module for module in method.modules() if isinstance(module, PooledHead)]:
            quantize_linears(head)
    if precision == INT8:
        for layer in encoder.layers:
            quantize_linears(layer)
    if precision in (ONNX_FP32, ONNX_INT8):
        from core.onnx_layers import OnnxEncoder

        encoder = OnnxEncoder(encoder, int8=precision == ONNX_INT8)
    return encoder

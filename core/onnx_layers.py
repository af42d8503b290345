"""The encoder's transformer layers as ONNX Runtime sessions, one per layer, with the methods' decisions in between.

ONNX Runtime runs a BERT layer faster than eager PyTorch on a CPU (one graph call with fused
attention, GELU and LayerNorm kernels and MLAS GEMMs, instead of about forty eager calls), and
its int8 layers faster still. Exporting the whole model would fix the path; exporting each layer
on its own keeps the engine's loop: the layer loop, the planners, off-ramps and halting units stay
in PyTorch and decide between two session calls which layers run and for which rows, so skipped
layers are never computed here either.

``OnnxEncoder`` is an ``Encoder`` whose ``run_layer`` calls layer i's session. Its layer mask is
the 0/1 padding mask itself (each exported layer builds its additive mask inside the graph), so
the engine's row selection and padding trimming work unchanged. Inference only: no gradients.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.backbone import Encoder


def additive_padding(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 0/1 padding mask as the additive [B, 1, 1, S] mask BERT layers take, built inside an exported graph."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class LayerForward(nn.Module):
    """One transformer layer with its additive padding mask built inside the graph."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden, attention_mask=additive_padding(attention_mask, hidden.dtype))


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Keep the exporter's and quantizer's progress lines, warnings and logs (torchvision's absent kernels, the graph
    passes' notes, the quantizer's per-tensor notes on the root logger) off the user's terminal.
    """
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_graph(module: nn.Module, sample: tuple[torch.Tensor, ...], input_names: list[str], path: Path) -> Path:
    """Write ``module`` (in eval mode, no gradients) to ``path``.

    Dim 0 (batch) and dim 1 (length) of every input are dynamic.
    """
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    shapes = {name: {0: batch, 1: length} for name in input_names}
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module.eval(),
            sample,
            str(path),
            input_names=input_names,
            output_names=["output"],
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,
        )
    return path


def export_layer(layer: nn.Module, hidden_size: int, path: Path) -> Path:
    """Write one fp32 layer to ``path`` (batch and sequence length dynamic)."""
    sample = (torch.randn(2, 5, hidden_size), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]))
    return export_graph(LayerForward(layer), sample, ["hidden", "attention_mask"], path)


def quantize_onnx(path: str | Path, out: str | Path, one_graph: bool = False) -> Path:
    """ONNX Runtime's dynamic int8 quantization of every MatMul/Gemm weight.

    Per channel, with reduced range for CPUs without VNNI.

    ``one_graph``: a whole model with its decisions inside (core/onnx_graph.py): the weights in
    ``If`` branches are quantized too, and one-output units (planners, halting units) stay fp32,
    as ``int8`` keeps them.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    prepared = out.with_suffix(".prep.onnx")
    with quiet_exporter():
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        settings = {"weight_type": QuantType.QInt8, "per_channel": True, "reduce_range": True}
        if one_graph:
            settings |= {
                "nodes_to_exclude": one_output_units(onnx.load(str(prepared)).graph),
                "extra_options": {"EnableSubgraph": True},
            }
        quantize_dynamic(str(prepared), str(out), **settings)
    prepared.unlink()
    return out


def one_output_units(graph, weights: dict | None = None) -> list[str]:
    """Names of the MatMul/Gemm nodes, in ``graph`` and its ``If`` branches, whose weight has one output column."""
    weights = {**(weights or {}), **{item.name: list(item.dims) for item in graph.initializer}}
    names = []
    for node in graph.node:
        dims = weights.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") else None
        transposed = any(item.name == "transB" and item.i for item in node.attribute)
        if dims and dims[0 if transposed else -1] == 1:
            names.append(node.name)
        names += [name for item in node.attribute if item.g.node for name in one_output_units(item.g, weights)]
    return names


def new_session(path: Path, threads: int | None = None):
    """A CPU session with the thread count torch uses and spinning off.

    Idle ONNX Runtime threads otherwise spin and slow the torch calls between layers.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


_torch_threads_lock = threading.Lock()
_torch_threads_users = 0  # runs inside ``one_torch_thread`` now
_torch_threads_before = 1  # torch's thread count when the first of them began


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread while ONNX Runtime sessions do the heavy work, restored when the last such run ends.

    Between two session calls torch runs the embeddings and the methods' decisions. With several
    threads its OpenMP workers keep spinning after that small work and take cores from the next
    session's threads, so a method's batch ran slower than the full model through the same sessions
    even where it ran every layer; on one thread they never wake. Counted, so that overlapping runs
    from several threads restore the count that was there before the first.
    """
    global _torch_threads_users, _torch_threads_before
    with _torch_threads_lock:
        if not _torch_threads_users:
            _torch_threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        _torch_threads_users += 1
    try:
        yield
    finally:
        with _torch_threads_lock:
            _torch_threads_users -= 1
            if not _torch_threads_users:
                torch.set_num_threads(_torch_threads_before)


class OnnxEncoder(Encoder):
    """An encoder whose transformer layers run in ONNX Runtime (fp32 or int8), its embeddings in PyTorch."""

    def __init__(self, encoder: Encoder, int8: bool):
        super().__init__(encoder.bert)
        self._folder = tempfile.TemporaryDirectory(prefix="adaptive-bert-onnx-")  # removed with the encoder
        root = Path(self._folder.name)
        self.sessions = []
        for index, layer in enumerate(encoder.layers):
            path = export_layer(layer, encoder.hidden_size, root / f"layer-{index}-fp32.onnx")
            if int8:
                path = quantize_onnx(path, root / f"layer-{index}-int8.onnx")
            self.sessions.append(new_session(path))
        self.bert.encoder.layer = nn.ModuleList()  # the torch layers are not used again: do not keep a second copy

    @property
    def num_layers(self) -> int:
        return len(self.sessions)

    def running(self) -> contextlib.AbstractContextManager:
        """The sessions get the cores: torch runs the steps between them on one thread (``one_torch_thread``)."""
        return one_torch_thread()

    def attention_mask_for(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The 0/1 padding mask, cut to the rows' columns: the exported layers build their additive mask from it."""
        return attention_mask[:, : hidden.shape[1]].to(torch.int64)

    def run_layer(self, index: int, hidden: torch.Tensor, layer_mask: torch.Tensor | None) -> torch.Tensor:
        if layer_mask is None:
            layer_mask = torch.ones(hidden.shape[:2], dtype=torch.int64)
        feed = {"hidden": np.ascontiguousarray(hidden.detach().float().numpy()), "attention_mask": layer_mask.numpy()}
        return torch.from_numpy(self.sessions[index].run(None, feed)[0])

"""The full model in ONNX Runtime, fp32 and int8: what a user who only wants speed would pick instead.

    export_full_model(model, folder)            -> folder/full-fp32.onnx
    core.onnx_layers.quantize_onnx(path, out)   -> out (int8 dynamic quantization, ONNX Runtime's own tool)
    OnnxModel(path, threads).run(batch)         -> probabilities [B, C] or scores [B]

The export is the engine's own computation of the full model (embeddings, every layer, the
head's answer) traced by ``torch.onnx.export`` (the dynamo exporter), with the batch and
sequence length dynamic, so ONNX Runtime answers exactly what the engine's full model answers
(tested to 1e-4 in fp32). Only the baseline is exported: the adaptive methods' decisions are
what the engine is for.

Sessions run with the thread count torch uses and with spinning off
(``session.intra_op.allow_spinning = 0``): ONNX Runtime's idle threads otherwise keep spinning
after a call and slow whatever runs next in the process, which would bias an interleaved
benchmark against the torch rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import UserError
from core.model import AdaptiveModel
from core.onnx_layers import additive_padding, export_graph, new_session
from core.pooling import pool
from core.precision import FP32, INT8

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
ONNX_PRECISIONS = (FP32, INT8)


class FullForward(nn.Module):
    """The full model as one traceable forward.

    Embeddings, every layer with an additive padding mask, the head's answer.
    """

    def __init__(self, model: AdaptiveModel):
        super().__init__()
        if model.method.exits_early or model.method.knob is not None:
            raise UserError(f"only the full model is exported to ONNX Runtime, not {model.method.title}")
        self.encoder, self.method = model.encoder, model.method

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder.embed(input_ids, token_type_ids)
        padding = additive_padding(attention_mask, hidden.dtype)
        for index in range(self.encoder.num_layers):
            hidden = self.encoder.run_layer(index, hidden, padding)
        return self.method.answer(
            pool(hidden, attention_mask, self.method.pooling), self.method.begin(input_ids.shape[0], input_ids.device)
        )


def export_full_model(model: AdaptiveModel, folder: str | Path) -> Path:
    """Write the fp32 full model to ``folder/full-fp32.onnx`` (batch and sequence length dynamic)."""
    if model.precision != FP32:
        raise UserError(f"export the fp32 model; this one is {model.precision}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "full-fp32.onnx"
    sample = model.tokenize(
        ["a short first sentence", "and a longer second one, for padding"],
        ["its pair", "its pair too"] if model.config.pair else None,
    )
    args = tuple(sample.get(name, torch.zeros_like(sample["input_ids"])) for name in INPUT_NAMES)
    return export_graph(FullForward(model), args, list(INPUT_NAMES), path)


class OnnxModel:
    """An ONNX Runtime session of an exported full model, with the thread count torch uses and no spinning."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.session = new_session(Path(path), threads)
        self.inputs = [item.name for item in self.session.get_inputs()]

    def feed(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        ids = batch["input_ids"]
        given = {"token_type_ids": torch.zeros_like(ids)} | dict(batch)
        return {name: given[name].numpy() for name in self.inputs}

    def run(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        """The model's answer for one tokenized batch: probabilities [B, C], or scores [B] for regression."""
        return self.session.run(None, self.feed(batch))[0]

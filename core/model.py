"""An adaptive model: tokenizer + encoder + one method.

It checks and tokenizes inputs and runs them through the engine.

What comes out is the engine's batches: ``predict`` hands them to core/trace.py for traces,
``run_inputs`` gathers them into tensors in input order (core/outcome.py) for counting.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from core.backbone import DEFAULT_BACKBONE, Encoder, load_bert, load_tokenizer, resolve_backbone
from core.engine import BatchResult, LayerRecord, run_batch
from core.errors import UserError
from core.methods import Method, MethodConfig, RunSettings, get_method
from core.onnx_graph import OneGraphRuntime
from core.outcome import Outcome, RanBatch
from core.pooling import resolve_pooling
from core.precision import (
    CHOICES,
    FASTEST,
    FP32,
    ONNX,
    ONNX_INT8,
    PrecisionChoice,
    apply_precision,
    check_device,
    check_precision,
    fastest_precision,
)
from core.tasks import TaskSpec, as_task
from core.trace import Trace, build_traces


@dataclass
class ModelConfig:
    """What ``config.json`` of a checkpoint holds."""

    method: str
    task: str
    labels: list[str] | None  # None: regression
    pair: bool
    backbone: str = DEFAULT_BACKBONE
    encoder_weights: str = "base"  # base | lora | delta | full (core/checkpoint.py)
    base_checkpoint: str | None = None  # folder (relative to this one) whose encoder this one builds on
    lora: dict | None = None  # LoRA settings when encoder_weights == "lora"
    backbone_config: dict | None = None  # the BERT config, so a full-weights checkpoint rebuilds without the backbone
    method_config: dict = field(default_factory=dict)  # the method's typed config (core.methods.<method>.Config)
    threshold: float | None = None  # the shipped operating point: the method's knob value (None: the method's default)
    operating_point: dict = field(
        default_factory=dict
    )  # how the threshold was chosen: split, rule, validation metrics
    max_length: int = 512
    trained: bool = False
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class AdaptiveModel(nn.Module):
    def __init__(
        self,
        encoder: Encoder,
        method: Method,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelConfig,
        source: str | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.method = method
        self.tokenizer = tokenizer
        self.config = config
        self.source = source  # the checkpoint folder it was loaded from, if any
        self.precision = FP32  # core.precision: fp32, bf16, int8, onnx-fp32 or onnx-int8 (``with_precision``)
        self.base_folder: Path | None = (
            None  # the checkpoint whose encoder this one builds on (saved as base_checkpoint)
        )
        self.one_graph: OneGraphRuntime | None = None  # onnx-*: batch size 1 runs as one graph (core/onnx_graph.py)
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer raises "Already borrowed" if two threads share it

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    @property
    def device(self) -> torch.device:
        """Where the weights are (``model.to(device)`` moves them); ``predict`` sends its inputs there.

        Read off the input embeddings, which every encoder keeps in PyTorch: walking the parameters costs
        more than that on every call at batch size 1.
        """
        return self.encoder.bert.get_input_embeddings().weight.device

    @property
    def max_length(self) -> int:
        return min(
            self.config.max_length, self.encoder.config.max_position_embeddings, self.tokenizer.model_max_length
        )

    def default_threshold(self) -> float | None:
        return self.method.default_threshold if self.config.threshold is None else self.config.threshold

    def fastest_precision(self) -> PrecisionChoice:
        """What ``with_precision("fastest")`` picks on this model's device, from the checkpoint's validation checks."""
        return fastest_precision(self.config.operating_point, self.device, regression=self.config.labels is None)

    def with_precision(self, precision: str) -> AdaptiveModel:
        """This model at another precision (core/precision.py): a converted copy of encoder and method.

        ``self`` if it already is at that precision. ``"fastest"`` picks one (``fastest_precision``).

        Converts from fp32 only (keep the fp32 model to derive the others); shares the tokenizer.
        """
        check_precision(precision, CHOICES)
        if precision == FASTEST:
            precision = self.fastest_precision().precision
        if precision == self.precision:
            return self
        if self.precision != FP32:
            raise UserError(f"convert from the fp32 model: this one is already {self.precision}")
        check_device(precision, self.device)
        encoder, method = copy.deepcopy(self.encoder), copy.deepcopy(self.method)
        encoder = apply_precision(encoder, method, precision)
        model = AdaptiveModel(encoder, method, self.tokenizer, copy.deepcopy(self.config), source=self.source)
        if precision in ONNX:  # a single input runs as one graph with the decisions inside
            model.one_graph = OneGraphRuntime(self.encoder, self.method, int8=precision == ONNX_INT8)
        model.base_folder, model.precision, model._tokenizer_lock = self.base_folder, precision, self._tokenizer_lock
        return model.eval()

    def check_threshold(self, threshold: float | None) -> None:
        if threshold is None:
            return
        knob = self.method.knob
        if knob is None:
            raise UserError(
                f"{self.method.title} has no threshold to set; "
                "use early_exit=False (--no-early-exit) to run every layer"
            )
        knob.check(threshold, self.method.title)

    def check_inputs(self, texts: list[str], pairs: list[str] | None) -> None:
        if not texts:
            raise UserError("no input given: pass at least one text")
        if pairs is not None and len(pairs) != len(texts):
            raise UserError(f"{len(texts)} texts but {len(pairs)} second sentences: give one second sentence per text")
        if pairs is not None and not self.config.pair:
            raise UserError(
                f"task {self.config.task} takes a single sentence, but a sentence pair was given: "
                "drop the second sentence"
            )
        if pairs is None and self.config.pair:
            raise UserError(
                f"task {self.config.task} takes a sentence pair: give the second sentence too (--text-pair)"
            )
        for number, text in enumerate(texts + (pairs or []), start=1):
            if not isinstance(text, str) or not text.strip():
                raise UserError(
                    f"input {number if number <= len(texts) else number - len(texts)} has an empty text: "
                    "give some words"
                )

    def settings(self, threshold: float | None = None, early_exit: bool = True) -> RunSettings:
        self.check_threshold(threshold)
        return RunSettings(
            threshold=self.default_threshold() if threshold is None else threshold, early_exit=early_exit
        )

    def tokenize(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        with self._tokenizer_lock:
            return self.tokenizer(
                texts, pairs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )

    def encode(
        self, texts: list[str], pairs: list[str] | None = None
    ) -> tuple[dict[str, list[list[int]]], list[bool]]:
        """Every input tokenized once and cut to ``max_length``: its unpadded token lists, and whether it was cut.

        The cut is read off the tokenizer's own encodings (the Rust ``tokenizers`` backend that
        BERT's tokenizer has keeps what truncation removed), so no input is tokenized twice.
        """
        with self._tokenizer_lock:
            encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, verbose=False)
        return dict(encoded), [bool(encoding.overflowing) for encoding in encoded.encodings]

    def pad_batch(self, tokens: dict[str, list[list[int]]], rows: list[int]) -> dict[str, torch.Tensor]:
        """The token lists (from ``encode``) of the inputs at ``rows`` as one padded batch of CPU tensors.

        One input needs no padding, so its lists become tensors directly: the tokenizer's ``pad`` is
        slow next to a batch-1 model call.
        """
        if len(rows) == 1:
            return {name: torch.tensor([values[rows[0]]]) for name, values in tokens.items()}
        with self._tokenizer_lock:
            return self.tokenizer.pad(
                {name: [values[i] for i in rows] for name, values in tokens.items()}, return_tensors="pt"
            )

    def token_counts(self, texts: list[str], pairs: list[str] | None = None) -> list[int]:
        """Untruncated lengths in tokens (the benchmark groups the inputs it times by them)."""
        with self._tokenizer_lock:
            encoded = self.tokenizer(texts, pairs, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def run_batches(
        self,
        texts: list[str],
        pairs: list[str] | None,
        settings: RunSettings,
        batch_size: int,
        progress: bool = False,
        layer_values: bool = True,
    ) -> Iterator[RanBatch]:
        """The inputs, checked, through the engine ``batch_size`` at a time.

        Grouped by length, so batches carry little padding.

        Under onnx-fp32 and onnx-int8 a batch of one input runs as a single ONNX Runtime graph call
        (``self.one_graph``) unless ``layer_values`` asks for each layer's reported values, which
        only the engine's per-layer path records.

        Each batch's outcome is moved to the CPU in one transfer (traces and counts read many
        single values); ``progress`` shows a tqdm bar over the batches.
        """
        self.check_inputs(texts, pairs)
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, not {batch_size}")
        if self.training:  # walking every module to set eval mode costs as much as a small layer at batch size 1
            self.eval()
        device = self.device
        tokens, truncated = self.encode(texts, pairs)
        lengths = [len(ids) for ids in tokens["input_ids"]]
        batches = length_sorted_batches(lengths, batch_size)
        one_graph = None if layer_values else self.one_graph
        if one_graph is not None and any(len(chosen) == 1 for chosen in batches):
            one_graph.session(settings)  # exported on first use: before the clock starts
        for chosen in tqdm(batches, desc=self.config.method, leave=False) if progress else batches:
            encoded = {name: value.to(device) for name, value in self.pad_batch(tokens, chosen).items()}
            began = time.perf_counter()
            inputs = (encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids"), settings)
            if one_graph is not None and len(chosen) == 1:
                result = one_graph.run(*inputs)
            else:
                result = run_batch(self.encoder, self.method, *inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(
                    device
                )  # the GPU runs asynchronously: wait for the batch before stopping the clock
            latency_ms = (time.perf_counter() - began) * 1000 / len(chosen)
            yield RanBatch(chosen, on_cpu(result), latency_ms, [truncated[i] for i in chosen])

    def predict(
        self,
        texts: list[str] | str,
        pairs: list[str] | str | None = None,
        *,
        threshold: float | None = None,
        early_exit: bool = True,
        batch_size: int = 32,
        layer_values: bool = False,
    ) -> list[Trace]:
        """Run the method on every input, ``batch_size`` at a time, and return one trace per input, in input order.

        A trace always holds the answer and the layer path; ``layer_values`` adds each layer's own
        prediction and the method's per-layer values (entropies, bounds, planner probabilities).
        Under onnx-fp32 and onnx-int8 at ``batch_size`` 1, each input is one call of a one-graph ONNX
        Runtime session; with ``layer_values`` the call falls back to the engine's per-layer sessions.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        pairs = [pairs] if isinstance(pairs, str) else (None if pairs is None else list(pairs))
        settings = self.settings(threshold, early_exit)
        traces: list[Trace | None] = [None] * len(texts)
        for batch in self.run_batches(texts, pairs, settings, batch_size, layer_values=layer_values):
            batch_texts = [texts[i] for i in batch.rows]
            batch_pairs = None if pairs is None else [pairs[i] for i in batch.rows]
            for index, trace in zip(
                batch.rows, build_traces(self, batch, settings, batch_texts, batch_pairs, layer_values)
            ):
                traces[index] = trace
        return traces

    def run_inputs(
        self,
        texts: list[str],
        pairs: list[str] | None,
        settings: RunSettings,
        batch_size: int = 32,
        progress: bool = False,
    ) -> Outcome:
        """The engine's tables for every input, run as ``predict`` runs them, in input order.

        ``settings`` come from ``self.settings``.
        """
        return Outcome.gather(
            list(self.run_batches(texts, pairs, settings, batch_size, progress)), self.method, settings
        )


def on_cpu(result: BatchResult) -> BatchResult:
    """The batch's outcome with every tensor on the CPU (where traces are built), whatever device it ran on."""
    return BatchResult(
        outputs=result.outputs.cpu(),
        exit_layer=result.exit_layer.cpu(),
        layers=[
            LayerRecord(
                record.rows.cpu(),
                None if record.ran is None else record.ran.cpu(),
                {name: value.cpu() for name, value in record.report.items()},
            )
            for record in result.layers
        ],
        num_layers=result.num_layers,
    )


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Input indices grouped into batches of similar length, so batches carry little padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def build_model(
    method: str, task: str | TaskSpec, backbone: str = DEFAULT_BACKBONE, method_config: MethodConfig | None = None
) -> AdaptiveModel:
    """A model with fresh (untrained) heads on the pretrained backbone, for a GLUE task (by name) or one's own.

    Pooling ``auto`` becomes the backbone's own.
    """
    method_class = get_method(method)
    spec = as_task(task)
    if not method_class.supports(spec.is_regression):
        raise UserError(
            f"{method_class.title} cannot run {spec.name}: it needs class probabilities, "
            f"and {spec.name} is a regression task"
        )
    bert = load_bert(backbone)
    encoder = Encoder(bert)
    method_config = method_config if method_config is not None else method_class.Config()
    method_config = method_config.replace(pooling=resolve_pooling(method_config.pooling, resolve_backbone(backbone)))
    method_module = method_class(encoder.hidden_size, encoder.num_layers, spec.num_outputs, method_config)
    method_module.initialise_heads(encoder.pooler_state())
    config = ModelConfig(
        method=method,
        task=spec.name,
        labels=None if spec.labels is None else list(spec.labels),
        pair=spec.pair,
        backbone=backbone,
        method_config=method_module.config.to_dict(),
    )
    return AdaptiveModel(encoder, method_module, load_tokenizer(backbone), config)

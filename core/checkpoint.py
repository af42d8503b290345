"""Checkpoints: one folder with ``config.json`` and safetensors files. Nothing is ever unpickled.

A checkpoint stores only what differs from what it builds on: the method's heads (and planners,
halting units), plus, for the encoder, one of

- ``base``: nothing (the backbone as published, or the encoder of ``base_checkpoint``);
- ``lora``: LoRA adapters (a few MB, core/lora.py) on top of that;
- ``delta``: every changed weight as its int8 difference from the backbone, in ``encoder-*``
  shards (core/delta.py), so a fully fine-tuned model fits where files must stay under 10 MB;
- ``full``: every weight in fp32 (for training runs; rebuilt from the BERT config in config.json).

``base_checkpoint`` (a folder relative to this one, e.g. ``../full``) lets the methods of a task
share that task's fine-tuned full model instead of each carrying a copy. This module owns the
folder: config.json, the safetensors files, loading the base checkpoints a folder builds on, and
finding the checkpoints shipped in assets/.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

from core.backbone import DEFAULT_BACKBONE, Encoder, load_bert, load_tokenizer
from core.delta import apply_delta, quantised_delta, shards
from core.errors import UserError
from core.lora import adapter_state_dict, load_adapters, merge_lora, plain_state_dict
from core.methods import METHODS
from core.model import AdaptiveModel, ModelConfig, build_model
from core.tasks import task_slug

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "checkpoints"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARD_PATTERN = "encoder-*.safetensors"
ENCODER_FORMATS = ("base", "lora", "delta", "full")
MAX_BASE_DEPTH = 4  # base checkpoints of base checkpoints: a loop is a broken folder, not a model


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(
        {name: value.detach().cpu().contiguous().clone() for name, value in tensors.items()},
        path,
        metadata={"format": "pt"},
    )


def save_checkpoint(model: AdaptiveModel, folder: str | Path) -> Path:
    """Write config.json and the weights in the encoder format ``model.config.encoder_weights`` names."""
    if getattr(model, "precision", "fp32") != "fp32":
        raise UserError(
            f"save the fp32 model: precision ({model.precision}) is a run option, applied after loading "
            "(model.with_precision)"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(SHARD_PATTERN):
        stale.unlink()
    config = model.config
    weights = {f"method.{name}": value for name, value in model.method.state_dict().items()}
    bert = model.encoder.bert
    if config.encoder_weights == "lora":
        weights.update({f"encoder.{name}": value for name, value in adapter_state_dict(bert).items()})
    elif config.encoder_weights == "full":
        weights.update({f"encoder.{name}": value for name, value in plain_state_dict(bert).items()})
        config.backbone_config = bert.config.to_dict()
    elif config.encoder_weights == "delta":
        if model.base_folder is not None:
            raise UserError(
                "a delta checkpoint stores its whole encoder against the backbone; it cannot also build on a "
                "base checkpoint"
            )
        for number, shard in enumerate(shards(quantised_delta(bert, config.backbone)), start=1):
            _save(shard, folder / f"encoder-{number:05d}.safetensors")
    config.base_checkpoint = (
        None if model.base_folder is None else os.path.relpath(model.base_folder, folder.resolve())
    )
    config.method_config = model.method.config.to_dict()
    _save(weights, folder / WEIGHTS_FILE)
    write_config(config, folder)
    return folder


def write_config(config: ModelConfig, folder: str | Path) -> None:
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def write_operating_point(
    folder: str | Path, threshold: float | None, metrics: dict, operating_point: dict
) -> ModelConfig:
    """Record a checkpoint's shipped operating point: its knob value, how it was chosen, and its dev metrics.

    The one writer of operating points (publish and calibration both call it), so every
    checkpoint records them the same way.
    """
    config = read_config(folder)
    config.threshold = threshold
    config.metrics = metrics
    config.operating_point = operating_point
    write_config(config, folder)
    return config


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).is_dir():
        raise UserError(
            f"checkpoint folder {folder} does not exist: pass a folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    if not path.is_file():
        raise UserError(f"{path} is missing: a checkpoint folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged (not valid JSON: {error}); re-create the checkpoint") from error
    known = {field.name for field in fields(ModelConfig)}
    if not isinstance(data, dict) or not {"method", "task", "labels", "pair"} <= data.keys():
        raise UserError(f"{path} is not a checkpoint config: it needs at least the keys method, task, labels and pair")
    unknown = set(data) - known
    if unknown:
        raise UserError(
            f"{path} has keys this version does not know ({', '.join(sorted(unknown))}): it was written by an "
            "older or newer version; "
            "re-create the checkpoint with this one (training.train, then training.publish)"
        )
    config = ModelConfig(**data)
    if config.method not in METHODS:
        raise UserError(f"{path}: unknown method {config.method!r}; expected one of {', '.join(METHODS)}")
    method_config_class = METHODS[config.method].Config
    if isinstance(config.method_config, dict):  # settings added after it was written: what it did without them
        config.method_config |= {
            name: value
            for name, value in method_config_class.values_before_added.items()
            if name not in config.method_config
        }
    method_config_class.from_dict(config.method_config, where=f"{path}: method_config")
    if config.encoder_weights not in ENCODER_FORMATS:
        raise UserError(
            f"{path}: encoder_weights must be one of {', '.join(ENCODER_FORMATS)}, not {config.encoder_weights!r}"
        )
    if config.base_checkpoint and config.encoder_weights in ("full", "delta"):
        raise UserError(
            f"{path}: a {config.encoder_weights} checkpoint holds its whole encoder, so it cannot have a "
            "base_checkpoint"
        )
    return config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path} is missing: a checkpoint folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is damaged ({error}); re-download or re-create the checkpoint") from error


def _read_delta(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``delta`` checkpoint's encoder shards."""
    paths = sorted(folder.glob(SHARD_PATTERN))
    if not paths:
        raise UserError(
            f"{folder} has no {SHARD_PATTERN} files, which a delta checkpoint keeps its encoder in: re-create "
            "the checkpoint"
        )
    return {name: value for path in paths for name, value in _read_weights(path).items()}


def _does_not_fit(weights_path: Path, config: ModelConfig, error: Exception) -> UserError:
    return UserError(
        f"{weights_path} does not fit its config ({config.method}, {config.task}, backbone "
        f"{config.backbone}): {str(error).splitlines()[0]}"
    )


def _load_encoder(
    folder: Path, config: ModelConfig, weights: dict[str, torch.Tensor], merge_adapters: bool, depth: int
) -> tuple[Encoder, Path | None]:
    """A checkpoint's encoder, and the base checkpoint it builds on (whose encoder alone is loaded, not its heads or
    tokenizer).
    """
    encoder_weights = {
        name[len("encoder.") :]: value for name, value in weights.items() if name.startswith("encoder.")
    }
    base_folder = None
    if config.encoder_weights == "full":
        if not config.backbone_config:
            raise UserError(f"{folder / CONFIG_FILE}: a full-weights checkpoint needs backbone_config")
        bert = BertModel(BertConfig(**config.backbone_config))
    elif config.base_checkpoint:
        base_folder = (folder / config.base_checkpoint).resolve()
        if depth >= MAX_BASE_DEPTH:
            raise UserError(
                f"{folder / CONFIG_FILE}: base_checkpoint chain deeper than {MAX_BASE_DEPTH} (a loop?): point "
                "it at the task's full model"
            )
        base_config = read_config(base_folder)
        base_bert = _load_encoder(
            base_folder, base_config, _read_weights(base_folder / WEIGHTS_FILE), True, depth + 1
        )[0].bert
        bert = BertModel(base_bert.config)
        bert.load_state_dict(plain_state_dict(base_bert))
    else:
        bert = load_bert(config.backbone)
    encoder = Encoder(bert)
    try:
        if config.encoder_weights == "lora":
            load_adapters(encoder, config.lora or {}, encoder_weights)
        elif config.encoder_weights == "full":
            bert.load_state_dict(encoder_weights, strict=True)
        elif config.encoder_weights == "delta":
            apply_delta(bert, _read_delta(folder))
    except (RuntimeError, KeyError) as error:
        raise _does_not_fit(folder / WEIGHTS_FILE, config, error) from error
    if merge_adapters:
        merge_lora(encoder)
    return encoder, base_folder


def load_checkpoint(folder: str | Path, merge_adapters: bool = True) -> AdaptiveModel:
    """Load a checkpoint folder. ``merge_adapters=False`` keeps LoRA separate (to go on training)."""
    folder = Path(folder)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    weights = _read_weights(weights_path)
    encoder, base_folder = _load_encoder(folder, config, weights, merge_adapters, depth=0)
    num_outputs = 1 if config.labels is None else len(config.labels)
    method_class = METHODS[config.method]
    method = method_class(
        encoder.hidden_size, encoder.num_layers, num_outputs, method_class.Config.from_dict(config.method_config)
    )
    try:
        method.load_state_dict(
            {name[len("method.") :]: value for name, value in weights.items() if name.startswith("method.")},
            strict=True,
        )
    except RuntimeError as error:
        raise _does_not_fit(weights_path, config, error) from error
    tokenizer_source = str(folder) if (folder / "tokenizer_config.json").is_file() else config.backbone
    model = AdaptiveModel(encoder, method, load_tokenizer(tokenizer_source), config, source=str(folder))
    model.base_folder = base_folder
    return model.eval()


def encoder_holder(model: AdaptiveModel) -> Path | None:
    """The folder whose weights hold this model's encoder as it is (before any adapters of its own), or None.

    The backbone.
    """
    if model.config.encoder_weights in ("full", "delta"):
        return Path(model.source).resolve() if model.source else None
    return model.base_folder


def shipped_checkpoint(task: str, method: str) -> Path | None:
    """The trained checkpoint shipped in ``assets/checkpoints/<task>/<method>``, if there is one."""
    folder = SHIPPED_DIR / task_slug(task) / method
    return folder if (folder / CONFIG_FILE).is_file() else None


def load_for_task(task: str, method: str, backbone: str = DEFAULT_BACKBONE) -> AdaptiveModel:
    """The shipped checkpoint of a task and method, or untrained heads on ``backbone`` when none is shipped."""
    folder = shipped_checkpoint(task, method)
    return load_checkpoint(folder) if folder is not None else build_model(method, task, backbone=backbone).eval()

"""Checkpoints: one folder with ``config.json`` and safetensors files. Nothing is ever unpickled.

A checkpoint stores only what differs from what it builds on: the method's heads (and planners,
halting units), plus, for the encoder, one of

- ``base``: nothing (the backbone as published, or the encoder of ``base_checkpoint``);
- ``lora``: LoRA adapters (a few MB) on top of that;
- ``delta``: every changed weight as its difference from the backbone, int8 with one scale per
  row, in shards of at most 8 MB (a fine-tuned 6-layer MiniLM: about 10 MB), so a fully
  fine-tuned model fits where files must stay under 10 MB;
- ``full``: every weight in fp32 (for training runs; rebuilt from the BERT config in config.json).

``base_checkpoint`` (a folder relative to this one, e.g. ``../full``) lets the methods of a task
share that task's fine-tuned full model instead of each carrying a copy.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

from core.backbone import DEFAULT_BACKBONE, Encoder, load_bert, load_tokenizer
from core.errors import UserError
from core.methods import METHODS
from core.model import AdaptiveModel, ModelConfig, build_model

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "checkpoints"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARD_PATTERN = "encoder-*.safetensors"
SHARD_BYTES = 8 * 2**20
ENCODER_FORMATS = ("base", "lora", "delta", "full")
MAX_BASE_DEPTH = 4  # base checkpoints of base checkpoints: a loop is a broken folder, not a model
# the linear layers inside the transformer layers (not the pooler, which the heads replace)
LORA_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"


def add_lora(encoder: Encoder, rank: int = 16, alpha: int = 32, dropout: float = 0.05) -> dict:
    """Put LoRA adapters on the encoder's layers (their base weights frozen); return the settings to save."""
    settings = {"rank": rank, "alpha": alpha, "dropout": dropout}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    inject_adapter_in_model(config, encoder.bert)
    return settings


def merge_lora(encoder: Encoder) -> None:
    """Fold adapters into the base weights so inference pays nothing for them."""
    for module in encoder.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge()


def plain_state_dict(bert: BertModel) -> dict[str, torch.Tensor]:
    """The encoder's weights under plain BERT names (merged LoRA wrappers unwrapped, adapters dropped)."""
    for module in bert.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            raise ValueError("merge the LoRA adapters before taking plain weights")
    return {name.replace(".base_layer", ""): value for name, value in bert.state_dict().items() if "lora_" not in name}


def quantised_delta(bert: BertModel, backbone: str) -> dict[str, torch.Tensor]:
    """The weights that differ from the published backbone: matrices as int8 differences with a scale per row, the rest as they are."""
    reference = load_bert(backbone).state_dict()
    tensors = {}
    for name, value in plain_state_dict(bert).items():
        difference = value.detach().float().cpu() - reference[name].float()  # the model may be on a GPU; the reference is on the CPU
        if not difference.any():
            continue
        if value.dim() == 2:
            scale = difference.abs().amax(1).clamp_min(1e-12) / 127
            tensors[f"delta.{name}.int8"] = (difference / scale.unsqueeze(1)).round().clamp(-127, 127).to(torch.int8)
            tensors[f"delta.{name}.scale"] = scale
        else:
            tensors[f"encoder.{name}"] = value.detach().float().cpu()
    return tensors


def _shards(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    shards, size = [{}], 0
    for name, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += nbytes
    return shards


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({name: value.detach().cpu().contiguous().clone() for name, value in tensors.items()}, path, metadata={"format": "pt"})


def save_checkpoint(model: AdaptiveModel, folder: str | Path) -> Path:
    """Write config.json and the weights in the encoder format ``model.config.encoder_weights`` names."""
    if getattr(model, "precision", "fp32") != "fp32":
        raise UserError(f"save the fp32 model: precision ({model.precision}) is a run option, applied after loading (model.with_precision)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(SHARD_PATTERN):
        stale.unlink()
    config = model.config
    weights = {f"method.{name}": value for name, value in model.method.state_dict().items()}
    bert = model.encoder.bert
    if config.encoder_weights == "lora":
        weights.update({f"encoder.{name}": value for name, value in get_peft_model_state_dict(bert).items()})
    elif config.encoder_weights == "full":
        weights.update({f"encoder.{name}": value for name, value in plain_state_dict(bert).items()})
        config.backbone_config = bert.config.to_dict()
    elif config.encoder_weights == "delta":
        if model.base_folder is not None:
            raise UserError("a delta checkpoint stores its whole encoder against the backbone; it cannot also build on a base checkpoint")
        for number, shard in enumerate(_shards(quantised_delta(bert, config.backbone)), start=1):
            _save(shard, folder / f"encoder-{number:05d}.safetensors")
    config.base_checkpoint = None if model.base_folder is None else os.path.relpath(model.base_folder, folder.resolve())
    config.method_config = model.method.config.to_dict()
    _save(weights, folder / WEIGHTS_FILE)
    write_config(config, folder)
    return folder


def write_config(config: ModelConfig, folder: str | Path) -> None:
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def write_operating_point(folder: str | Path, threshold: float | None, metrics: dict, operating_point: dict) -> ModelConfig:
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


def _migrate(data: dict) -> dict:
    """Bring a config.json written by an earlier version up to date (the shipped checkpoints predate typed configs)."""
    if "method_hyperparameters" not in data:
        return data
    data = dict(data)
    method_config = dict(data.pop("method_hyperparameters") or {})
    if data.get("method") in METHODS:
        method_config = METHODS[data["method"]].legacy_config(method_config, data.get("training") or {})
    data["method_config"] = method_config
    metrics = dict(data.get("metrics") or {})
    rule = metrics.pop("operating_point", None)
    if rule and rule != "all layers":
        data["operating_point"] = {"rule": rule, "chosen_on": "dev"}
    data["metrics"] = metrics
    return data


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not Path(folder).is_dir():
        raise UserError(f"checkpoint folder {folder} does not exist: pass a folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not path.is_file():
        raise UserError(f"{path} is missing: a checkpoint folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged (not valid JSON: {error}); re-create the checkpoint") from error
    known = {field.name for field in fields(ModelConfig)}
    if not isinstance(data, dict) or not {"method", "task", "labels", "pair"} <= data.keys():
        raise UserError(f"{path} is not a checkpoint config: it needs at least the keys method, task, labels and pair")
    data = _migrate(data)
    unknown = set(data) - known
    if unknown:
        raise UserError(f"{path} has unknown keys {sorted(unknown)}; was it written by a newer version?")
    config = ModelConfig(**data)
    if config.method not in METHODS:
        raise UserError(f"{path}: unknown method {config.method!r}; expected one of {', '.join(METHODS)}")
    METHODS[config.method].Config.from_dict(config.method_config, where=f"{path}: method_config")
    if config.encoder_weights not in ENCODER_FORMATS:
        raise UserError(f"{path}: encoder_weights must be one of {', '.join(ENCODER_FORMATS)}, not {config.encoder_weights!r}")
    if config.base_checkpoint and config.encoder_weights in ("full", "delta"):
        raise UserError(f"{path}: a {config.encoder_weights} checkpoint holds its whole encoder, so it cannot have a base_checkpoint")
    return config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path} is missing: a checkpoint folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is damaged ({error}); re-download or re-create the checkpoint") from error


def _apply_delta(bert: BertModel, folder: Path) -> None:
    """Add the int8 differences (and set the other changed weights) of a ``delta`` checkpoint to the backbone."""
    shards = sorted(folder.glob(SHARD_PATTERN))
    if not shards:
        raise UserError(f"{folder} has no {SHARD_PATTERN} files, which a delta checkpoint keeps its encoder in: re-create the checkpoint")
    tensors = {name: value for path in shards for name, value in _read_weights(path).items()}
    parameters = bert.state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("delta.") and key.endswith(".int8"):
                name = key[len("delta.") : -len(".int8")]
                parameters[name].add_(value.float() * tensors[f"delta.{name}.scale"].unsqueeze(1))
            elif key.startswith("encoder."):
                parameters[key[len("encoder.") :]].copy_(value)
            elif not key.endswith(".scale"):
                raise KeyError(key)


def _does_not_fit(weights_path: Path, config: ModelConfig, error: Exception) -> UserError:
    return UserError(f"{weights_path} does not fit its config ({config.method}, {config.task}, backbone {config.backbone}): {str(error).splitlines()[0]}")


def _load_encoder(folder: Path, config: ModelConfig, weights: dict[str, torch.Tensor], merge_adapters: bool, depth: int) -> tuple[Encoder, Path | None]:
    """A checkpoint's encoder, and the base checkpoint it builds on (whose encoder alone is loaded, not its heads or tokenizer)."""
    encoder_weights = {name[len("encoder.") :]: value for name, value in weights.items() if name.startswith("encoder.")}
    base_folder = None
    if config.encoder_weights == "full":
        if not config.backbone_config:
            raise UserError(f"{folder / CONFIG_FILE}: a full-weights checkpoint needs backbone_config")
        bert = BertModel(BertConfig(**config.backbone_config))
    elif config.base_checkpoint:
        base_folder = (folder / config.base_checkpoint).resolve()
        if depth >= MAX_BASE_DEPTH:
            raise UserError(f"{folder / CONFIG_FILE}: base_checkpoint chain deeper than {MAX_BASE_DEPTH} (a loop?): point it at the task's full model")
        base_config = read_config(base_folder)
        base_bert = _load_encoder(base_folder, base_config, _read_weights(base_folder / WEIGHTS_FILE), True, depth + 1)[0].bert
        bert = BertModel(base_bert.config)
        bert.load_state_dict(plain_state_dict(base_bert))
    else:
        bert = load_bert(config.backbone)
    encoder = Encoder(bert)
    try:
        if config.encoder_weights == "lora":
            add_lora(encoder, **(config.lora or {}))
            result = set_peft_model_state_dict(bert, encoder_weights)
            missing = [name for name in result.missing_keys if "lora_" in name]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"adapter weights do not match: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
        elif config.encoder_weights == "full":
            bert.load_state_dict(encoder_weights, strict=True)
        elif config.encoder_weights == "delta":
            _apply_delta(bert, folder)
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
    method = method_class(encoder.hidden_size, encoder.num_layers, num_outputs, method_class.Config.from_dict(config.method_config))
    try:
        method.load_state_dict({name[len("method.") :]: value for name, value in weights.items() if name.startswith("method.")}, strict=True)
    except RuntimeError as error:
        raise _does_not_fit(weights_path, config, error) from error
    tokenizer_source = str(folder) if (folder / "tokenizer_config.json").is_file() else config.backbone
    model = AdaptiveModel(encoder, method, load_tokenizer(tokenizer_source), config, source=str(folder))
    model.base_folder = base_folder
    return model.eval()


def encoder_holder(model: AdaptiveModel) -> Path | None:
    """The folder whose weights hold this model's encoder as it is (before any adapters of its own), or None: the backbone."""
    if model.config.encoder_weights in ("full", "delta"):
        return Path(model.source).resolve() if model.source else None
    return model.base_folder


def shipped_checkpoint(task: str, method: str) -> Path | None:
    """The trained checkpoint shipped in ``assets/checkpoints/<task>/<method>``, if there is one."""
    folder = SHIPPED_DIR / task.replace("-", "").lower() / method
    return folder if (folder / CONFIG_FILE).is_file() else None


def load_for_task(task: str, method: str, backbone: str = DEFAULT_BACKBONE) -> AdaptiveModel:
    """The shipped checkpoint of a task and method, or untrained heads on ``backbone`` when none is shipped."""
    folder = shipped_checkpoint(task, method)
    return load_checkpoint(folder) if folder is not None else build_model(method, task, backbone=backbone).eval()

"""Checkpoints: one folder with ``config.json`` and ``model.safetensors``. Nothing is ever unpickled.

A checkpoint stores only what differs from its backbone: the method's heads (and planners,
halting units), plus either nothing of the encoder (``base``), its LoRA adapters (``lora``,
a few MB) or all its weights (``full``, rebuilt from the BERT config kept in config.json).
"""
from __future__ import annotations

import json
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


def save_checkpoint(model: AdaptiveModel, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    weights = {f"method.{name}": value for name, value in model.method.state_dict().items()}
    bert = model.encoder.bert
    if config.encoder_weights == "lora":
        weights.update({f"encoder.{name}": value for name, value in get_peft_model_state_dict(bert).items()})
    elif config.encoder_weights == "full":
        weights.update({f"encoder.{name}": value for name, value in bert.state_dict().items()})
        config.backbone_config = bert.config.to_dict()
    config.method_config = model.method.config.to_dict()
    save_file({name: value.detach().contiguous().clone() for name, value in weights.items()}, folder / WEIGHTS_FILE, metadata={"format": "pt"})
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


# Keys of configs written before methods had typed configs, and where their values live now.
_OLD_TRAINING_KEYS = {"dact": {"tau": "tau"}, "dpbert": {"target_skip_rate": "target_skip_rate", "rate_weight": "rate_weight", "loss_weight": "reward_loss_weight"}}


def _migrate(data: dict) -> dict:
    """Bring a config.json written by an earlier version up to date (the shipped checkpoints predate typed configs)."""
    if "method_hyperparameters" not in data:
        return data
    data = dict(data)
    method_config = dict(data.pop("method_hyperparameters") or {})
    training = data.get("training") or {}
    for old, new in _OLD_TRAINING_KEYS.get(data.get("method"), {}).items():
        if old in training:
            method_config[new] = training[old]
    if data.get("method") == "dpbert":  # what those models were trained with
        method_config |= {"rate_penalty": "mean", "first_layer": "cls", "policy_weight": 1.0}
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
    if config.encoder_weights not in ("base", "lora", "full"):
        raise UserError(f"{path}: encoder_weights must be base, lora or full, not {config.encoder_weights!r}")
    return config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path} is missing: a checkpoint folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path} is damaged ({error}); re-download or re-create the checkpoint") from error


def load_checkpoint(folder: str | Path, merge_adapters: bool = True) -> AdaptiveModel:
    """Load a checkpoint folder. ``merge_adapters=False`` keeps LoRA separate (to go on training)."""
    folder = Path(folder)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_FILE
    weights = _read_weights(weights_path)
    method_weights = {name[len("method."):]: value for name, value in weights.items() if name.startswith("method.")}
    encoder_weights = {name[len("encoder."):]: value for name, value in weights.items() if name.startswith("encoder.")}

    if config.encoder_weights == "full":
        if not config.backbone_config:
            raise UserError(f"{folder / CONFIG_FILE}: a full-weights checkpoint needs backbone_config")
        bert = BertModel(BertConfig(**config.backbone_config))
    else:
        bert = load_bert(config.backbone)
    encoder = Encoder(bert)
    labels = config.labels
    num_outputs = 1 if labels is None else len(labels)
    method_class = METHODS[config.method]
    method = method_class(encoder.hidden_size, encoder.num_layers, num_outputs, method_class.Config.from_dict(config.method_config))

    try:
        if config.encoder_weights == "lora":
            add_lora(encoder, **(config.lora or {}))
            result = set_peft_model_state_dict(bert, encoder_weights)
            missing = [name for name in result.missing_keys if "lora_" in name]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"adapter weights do not match: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
        elif config.encoder_weights == "full":
            bert.load_state_dict(encoder_weights, strict=True)
        method.load_state_dict(method_weights, strict=True)
    except RuntimeError as error:
        raise UserError(
            f"{weights_path} does not fit its config ({config.method}, {config.task}, backbone {config.backbone}): {str(error).splitlines()[0]}"
        ) from error

    if merge_adapters:
        merge_lora(encoder)
    tokenizer_source = str(folder) if (folder / "tokenizer_config.json").is_file() else config.backbone
    model = AdaptiveModel(encoder, method, load_tokenizer(tokenizer_source), config, source=str(folder))
    return model.eval()


def shipped_checkpoint(task: str, method: str) -> Path | None:
    """The trained checkpoint shipped in ``assets/checkpoints/<task>/<method>``, if there is one."""
    folder = SHIPPED_DIR / task.replace("-", "").lower() / method
    return folder if (folder / CONFIG_FILE).is_file() else None


def load_for_task(task: str, method: str, backbone: str = DEFAULT_BACKBONE) -> AdaptiveModel:
    """The shipped checkpoint of a task and method, or untrained heads on ``backbone`` when none is shipped."""
    folder = shipped_checkpoint(task, method)
    return load_checkpoint(folder) if folder is not None else build_model(method, task, backbone=backbone).eval()

"""The papers' staged recipes, read off each method's ``stages``: what a stage starts from and what it trains.

Stage 1 of every recipe is the ``full`` model (the backbone fine-tuned with the task head). A
stage that ``starts_from="full"`` takes over that model's encoder and head
(``Method.start_from_full``); ``"previous"`` continues a checkpoint of the same method (DPBERT's
RL stage after its relaxed stage). A stage with ``trains_encoder=False`` keeps the encoder and
its adapters frozen; which of the method's own parameters train is ``Method.trainable_heads``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from core.backbone import resolve_backbone
from core.checkpoint import encoder_holder, load_checkpoint
from core.errors import UserError
from core.lora import add_lora
from core.methods import BASELINE, MethodConfig, Stage, TrainBatch, get_method
from core.model import AdaptiveModel, build_model
from core.pooling import resolve_pooling
from core.tasks import TaskSpec, as_task


class TrainingObjective(nn.Module):
    """Encoder + method as one module whose forward is the method's loss for a stage (what accelerate wraps)."""

    def __init__(self, model: AdaptiveModel, stage: Stage):
        super().__init__()
        self.encoder = model.encoder
        self.method = model.method
        self.stage = stage

    def forward(self, input_ids, attention_mask, token_type_ids, labels):
        batch = TrainBatch(input_ids, attention_mask, token_type_ids, labels)
        return self.method.training_loss(self.encoder, batch, self.stage)


def starting_model(
    method: str,
    task: str | TaskSpec,
    stage: Stage,
    settings: dict,
    backbone: str,
    init: str | None = None,
    finetune: str = "lora",
    lora_rank: int = 16,
    encoder_from: str | None = None,
) -> AdaptiveModel:
    """The model a stage starts from, with the method's config updated by ``settings`` (only the options given).

    Settings not given keep their defaults, or the previous stage's values when continuing it.
    """
    method_class = get_method(method)
    if stage.starts_from == "backbone":
        model = build_model(
            method, task, backbone=backbone, method_config=method_class.Config.from_dict(settings, where="settings")
        )
        if encoder_from:
            model.encoder.bert.load_state_dict(load_checkpoint(encoder_from).encoder.bert.state_dict())
        if finetune == "lora":
            model.config.lora = add_lora(model.encoder, rank=lora_rank, alpha=2 * lora_rank)
            model.config.encoder_weights = "lora"
        else:
            model.config.encoder_weights = "full"
        return model
    if init is None:
        wanted = (
            "the stage-1 full model"
            if stage.starts_from == BASELINE
            else f"a {method} checkpoint of the stage before {stage.name}"
        )
        raise UserError(
            f"{method_class.title} stage {stage.name} starts from a trained checkpoint: pass --init ({wanted})"
        )
    previous = load_checkpoint(init, merge_adapters=False)
    spec = as_task(task)
    if previous.config.task != spec.name:
        raise UserError(f"--init {init} was trained on {previous.config.task}, not {spec.name}")
    if previous.config.labels != (None if spec.labels is None else list(spec.labels)):
        raise UserError(
            f"--init {init} was trained on the labels {previous.config.labels}, but these rows have "
            f"{spec.labels and list(spec.labels)}"
        )
    expected = method if stage.starts_from == "previous" else BASELINE
    if previous.config.method != expected:
        raise UserError(
            f"--init {init} is a {previous.config.method} model; {method_class.title} stage {stage.name} "
            f"starts from a {expected} model"
        )
    if stage.starts_from == "previous":
        previous.method.config = previous.method.config.replace(**settings)
        previous.config.method_config = previous.method.config.to_dict()
        return share_encoder(previous, encoder_holder(previous), stage, finetune, lora_rank)
    encoder = previous.encoder
    # the heads start from the full model's, so they read what it read unless the stage says otherwise
    config: MethodConfig = method_class.Config.from_dict(
        {"pooling": previous.method.pooling} | settings, where="settings"
    )
    config = config.replace(pooling=resolve_pooling(config.pooling, resolve_backbone(previous.config.backbone)))
    new_method = method_class(encoder.hidden_size, encoder.num_layers, previous.method.num_outputs, config)
    new_method.start_from_full(previous.method.head)
    previous.config.method = method
    previous.config.method_config = config.to_dict()
    previous.config.threshold, previous.config.operating_point = None, {}
    model = AdaptiveModel(encoder, new_method, previous.tokenizer, previous.config)
    return share_encoder(model, encoder_holder(previous), stage, finetune, lora_rank)


def share_encoder(
    model: AdaptiveModel, holder: Path | None, stage: Stage, finetune: str, lora_rank: int
) -> AdaptiveModel:
    """Build on the encoder of a fully fine-tuned model instead of copying it.

    A stage that keeps the encoder frozen stores none of it; one that trains it with
    ``--finetune lora`` stores only new adapters on top. Both refer to ``holder`` (saved as
    ``base_checkpoint``), so a task's methods share its full model. Models whose encoder is the
    backbone plus adapters (or ``--finetune full``) keep training what they have.
    """
    if holder is None or model.config.encoder_weights == "lora" or (stage.trains_encoder and finetune != "lora"):
        return model
    model.base_folder = holder
    model.config.backbone_config = None
    if stage.trains_encoder:
        model.config.lora = add_lora(model.encoder, rank=lora_rank, alpha=2 * lora_rank)
        model.config.encoder_weights = "lora"
    else:
        model.config.encoder_weights = "base"
    return model


def trainable_parameters(model: AdaptiveModel, stage: Stage, freeze_embeddings: bool = True) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze what this stage trains; return those parameters."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    chosen = list(model.method.trainable_heads(stage))
    if stage.trains_encoder:
        if model.config.encoder_weights == "lora":
            chosen += [p for name, p in model.encoder.named_parameters() if "lora_" in name]
        else:
            chosen += [
                p
                for name, p in model.encoder.named_parameters()
                if not (freeze_embeddings and ".embeddings." in f".{name}")
            ]
    for parameter in chosen:
        parameter.requires_grad_(True)
    return chosen

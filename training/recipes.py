"""The papers' staged recipes: what each stage starts from, what it trains, and with which objective.

Stage 1 (all methods): fine-tune the backbone with the task head -> the ``full`` checkpoint.
DeeBERT:  from stage 1, freeze everything and train the off-ramps of layers 1..L-1.
DACT:     from stage 1, train everything jointly on -log a_L[y] + tau * sum_n h_n.
DPBERT:   stage 2 (``relaxed``): from stage 1, backbone frozen, train planners (and the head)
          through the relaxed gate; stage 3 (``rl``): from stage 2, train backbone and planners
          jointly with REINFORCE on sampled paths.
"""
from __future__ import annotations

from torch import nn

from core.backbone import Encoder
from core.checkpoint import add_lora, load_checkpoint
from core.errors import UserError
from core.methods import METHODS, TrainBatch
from core.model import AdaptiveModel, build_model


class TrainingObjective(nn.Module):
    """Encoder + method as one module whose forward is the method's loss (what accelerate wraps)."""

    def __init__(self, model: AdaptiveModel, loss_options: dict):
        super().__init__()
        self.encoder = model.encoder
        self.method = model.method
        self.loss_options = loss_options

    def forward(self, input_ids, attention_mask, token_type_ids, labels):
        batch = TrainBatch(input_ids, attention_mask, token_type_ids, labels)
        loss, stats = self.method.training_loss(self.encoder, batch, **self.loss_options)
        return loss, stats


def starting_model(method: str, task: str, backbone: str, init: str | None, finetune: str, lora_rank: int, method_options: dict) -> AdaptiveModel:
    """The model a stage starts from: fresh heads (stage 1), or the previous stage's checkpoint."""
    if method == "full":
        model = build_model("full", task, backbone=backbone)
        if finetune == "lora":
            model.config.lora = add_lora(model.encoder, rank=lora_rank, alpha=2 * lora_rank)
            model.config.encoder_weights = "lora"
        else:
            model.config.encoder_weights = "full"
        return model
    if init is None:
        raise UserError(f"{method} starts from a trained checkpoint: pass --init (the stage-1 full model, or a DPBERT stage-2 model for --stage rl)")
    previous = load_checkpoint(init, merge_adapters=False)
    if previous.config.task != task:
        raise UserError(f"--init {init} was trained on {previous.config.task}, not {task}")
    if previous.config.method == method:
        return previous
    if previous.config.method != "full":
        raise UserError(f"--init {init} is a {previous.config.method} model; {method} starts from a full (stage-1) model")
    encoder: Encoder = previous.encoder
    spec_outputs = previous.method.num_outputs
    new_method = METHODS[method](encoder.hidden_size, encoder.num_layers, spec_outputs, **method_options)
    new_method.start_from_full(previous.method.head)
    previous.config.method = method
    previous.config.method_hyperparameters = new_method.hyperparameters()
    previous.config.threshold = None
    return AdaptiveModel(encoder, new_method, previous.tokenizer, previous.config)


def trainable_parameters(model: AdaptiveModel, method: str, stage: str) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze what this stage trains; return those parameters."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    encoder_params = [p for name, p in model.encoder.named_parameters() if model.config.encoder_weights != "lora" or "lora_" in name]
    if method == "deebert":
        chosen = [p for ramp in model.method.ramps[:-1] for p in ramp.parameters()]
    elif method == "dpbert" and stage == "relaxed":
        chosen = list(model.method.parameters())
    else:  # full, dact, dpbert rl: the encoder (or its adapters) and every head
        chosen = encoder_params + list(model.method.parameters())
    for parameter in chosen:
        parameter.requires_grad_(True)
    return chosen

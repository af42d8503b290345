"""Adaptive-depth BERT inference: DeeBERT, DACT-BERT and DPBERT on one backbone, in one engine."""

from core.checkpoint import load_checkpoint, save_checkpoint
from core.errors import UserError
from core.model import AdaptiveModel, ModelConfig, build_model
from core.trace import LayerStep, Trace

__all__ = [
    "AdaptiveModel",
    "LayerStep",
    "ModelConfig",
    "Trace",
    "UserError",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]

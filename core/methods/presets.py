"""Training settings that several methods' stages ship with (``Stage.training``), named once."""

from __future__ import annotations

# adapters on the full model's encoder, trained with the method's own parameters
LORA_JOINT = {"finetune": "lora", "lora_rank": 16, "warmup": 0.1, "epochs": 2.0, "lr": 5e-4, "batch_size": 32}
# the encoder frozen: only the method's heads (off-ramps, planners) train, at a higher rate
HEADS_ONLY = {"epochs": 2.0, "lr": 1e-3, "batch_size": 32}

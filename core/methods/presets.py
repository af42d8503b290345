"""Training settings that several methods' stages ship with (``Stage.training``), and the two kinds of stage that
use them, named once so that a method declares a stage in one line.
"""

from __future__ import annotations

from core.methods.declarations import Stage

# adapters on the full model's encoder, trained with the method's own parameters
LORA_JOINT = {"finetune": "lora", "lora_rank": 16, "warmup": 0.1, "epochs": 2.0, "lr": 5e-4, "batch_size": 32}
# the encoder frozen: only the method's heads (off-ramps, planners) train, at a higher rate
HEADS_ONLY = {"epochs": 2.0, "lr": 1e-3, "batch_size": 32}


def joint_stage(name: str, help: str, starts_from: str = "full", ships: bool = True) -> Stage:
    """A stage that trains the encoder (through LoRA adapters) together with the method's heads."""
    return Stage(name, starts_from=starts_from, trains_encoder=True, help=help, training=LORA_JOINT, ships=ships)


def heads_stage(name: str, help: str, starts_from: str = "full", ships: bool = True) -> Stage:
    """A stage that freezes the encoder and trains only the method's heads."""
    return Stage(name, starts_from=starts_from, trains_encoder=False, help=help, training=HEADS_ONLY, ships=ships)

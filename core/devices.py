"""Which device to run on.

``--device`` (and ``ADAPTIVE_BERT_DEVICE`` for the demo) names it; by default the best one present.
"""

from __future__ import annotations

import torch

from core.errors import UserError

AUTO = "auto"


def best_device() -> torch.device:
    """A CUDA GPU if there is one, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str | None) -> torch.device:
    """``auto`` / None: ``best_device()``.

    Otherwise the named device (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked to exist.
    """
    if name is None or name.strip().lower() in ("", AUTO):
        return best_device()
    try:
        device = torch.device(name.strip().lower())
    except RuntimeError as error:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"device {name!r} asked for, but no CUDA GPU is available here: use --device cpu (or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} asked for, but there are only {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {name!r} asked for, but MPS is not available here: use --device cpu (or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device

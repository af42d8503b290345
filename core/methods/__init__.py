"""One module per method; ``METHODS`` maps the names used in checkpoints and on command lines.

Adding a method: write one module here (a ``Method`` subclass with its ``Config``, ``stages``,
knob, layer fields and chart), add it to the tuple below, and add its tests.
"""

from core.methods.base import Method, RunSettings, TrainBatch
from core.methods.dact import DACT
from core.methods.declarations import Knob, LayerChart, LayerField, MethodConfig, Series, Stage
from core.methods.deebert import DeeBERT
from core.methods.dpbert import DPBERT
from core.methods.full import FullModel
from core.methods.pabee import PABEE

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (FullModel, DeeBERT, DACT, DPBERT, PABEE)}
BASELINE = FullModel.name  # the reference every adaptive method is measured against, and stage 1 of every recipe


def get_method(name: str) -> type[Method]:
    from core.errors import UserError

    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def adaptive_methods() -> list[str]:
    return [name for name in METHODS if name != BASELINE]


__all__ = [
    "BASELINE",
    "METHODS",
    "Knob",
    "LayerChart",
    "LayerField",
    "Method",
    "MethodConfig",
    "RunSettings",
    "Series",
    "Stage",
    "TrainBatch",
    "adaptive_methods",
    "get_method",
]

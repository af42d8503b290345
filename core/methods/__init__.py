"""One module per method; ``METHODS`` maps the names used in checkpoints and on command lines."""
from core.methods.base import Method, RunSettings, TrainBatch
from core.methods.dact import DACT
from core.methods.deebert import DeeBERT
from core.methods.dpbert import DPBERT
from core.methods.full import FullModel

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (FullModel, DeeBERT, DACT, DPBERT)}

__all__ = ["METHODS", "Method", "RunSettings", "TrainBatch", "FullModel", "DeeBERT", "DACT", "DPBERT"]

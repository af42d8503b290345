"""What each layer knows, as ``training.probe`` measured it for a task and committed it to
assets/results/<task>-probe/.
"""

from __future__ import annotations

import pandas as pd

from core.checkpoint import SHIPPED_DIR
from core.tasks import task_slug

PROBES_DIR = SHIPPED_DIR.parent / "results"


def probe_results(task: str) -> pd.DataFrame | None:
    """The task's committed probe table (model, layer, pooling, metric, ...), or None when none was committed."""
    path = PROBES_DIR / f"{task_slug(task)}-probe" / "results.csv"
    return pd.read_csv(path) if path.is_file() else None

"""What the engine needs to know about a task: its label names and whether it takes a sentence pair."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple[str, ...] | None  # None means regression (one score)
    pair: bool

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("SST-2", ("negative", "positive"), pair=False),
        TaskSpec("CoLA", ("unacceptable", "acceptable"), pair=False),
        TaskSpec("MRPC", ("not_equivalent", "equivalent"), pair=True),
        TaskSpec("RTE", ("entailment", "not_entailment"), pair=True),
        TaskSpec("QNLI", ("entailment", "not_entailment"), pair=True),
        TaskSpec("WNLI", ("not_entailment", "entailment"), pair=True),
        TaskSpec("STS-B", None, pair=True),
    ]
}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, case-insensitively (``sst2``, ``SST-2`` and ``sst-2`` all work)."""
    wanted = name.replace("-", "").lower()
    for spec in TASKS.values():
        if spec.name.replace("-", "").lower() == wanted:
            return spec
    from core.errors import UserError

    raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")

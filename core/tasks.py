"""What the engine needs to know about a task: its label names and whether it takes a sentence pair."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple[str, ...] | None  # None means regression (one score)
    pair: bool
    score_range: tuple[float, float] | None = None  # regression: the scale the gold scores are on
    score_meaning: str = ""  # regression: what the ends of the scale mean, for people

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def clip_score(self, score: float) -> float:
        """A regression output clipped to the task's scale.

        A model can answer outside the scale; the gold scores never are.
        """
        if self.score_range is None:
            return score
        low, high = self.score_range
        return min(max(score, low), high)

    def scale_text(self, meaning: bool = True) -> str:
        """``0–5 scale (0: unrelated, 5: same meaning)`` (``0–5 scale`` without the meaning), or empty for a task
        without a scale.
        """
        if self.score_range is None:
            return ""
        low, high = self.score_range
        return f"{low:g}–{high:g} scale" + (f" ({self.score_meaning})" if meaning and self.score_meaning else "")


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("SST-2", ("negative", "positive"), pair=False),
        TaskSpec("CoLA", ("unacceptable", "acceptable"), pair=False),
        TaskSpec("MRPC", ("not_equivalent", "equivalent"), pair=True),
        TaskSpec("RTE", ("entailment", "not_entailment"), pair=True),
        TaskSpec("QNLI", ("entailment", "not_entailment"), pair=True),
        TaskSpec("WNLI", ("not_entailment", "entailment"), pair=True),
        TaskSpec("STS-B", None, pair=True, score_range=(0.0, 5.0), score_meaning="0: unrelated, 5: same meaning"),
    ]
}


def task_slug(name: str) -> str:
    """A task's folder name (``SST-2`` -> ``sst2``), as runs/<task> and assets/checkpoints/<task> spell it."""
    return name.replace("-", "").lower()


def find_task(name: str) -> TaskSpec | None:
    """The GLUE task of that name, case-insensitively (``sst2``, ``SST-2`` and ``sst-2`` all work), or None."""
    wanted = task_slug(name)
    return next((spec for spec in TASKS.values() if task_slug(spec.name) == wanted), None)


def get_task(name: str) -> TaskSpec:
    """Look a GLUE task up by name (see ``find_task``); an unknown name is the user's to fix."""
    spec = find_task(name)
    if spec is None:
        from core.errors import UserError

        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return spec


def as_task(task: str | TaskSpec) -> TaskSpec:
    """A task given by its GLUE name, or as a spec of its own (a task trained from a user's file)."""
    return task if isinstance(task, TaskSpec) else get_task(task)


def canonical_task(name: str) -> str:
    """GLUE's spelling of a GLUE task's name (``sst2`` -> ``SST-2``); any other name as given (a task of one's own)."""
    spec = find_task(name)
    return name if spec is None else spec.name


def checkpoint_task(name: str, labels: list[str] | None, pair: bool) -> TaskSpec:
    """The task a checkpoint was trained on.

    The GLUE task of that name, or one of its own, from its config's labels and pair.

    A task of one's own needs no entry in ``TASKS``: everything the engine needs is in its config.json.
    """
    return find_task(name) or TaskSpec(name, None if labels is None else tuple(labels), pair)

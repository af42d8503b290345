"""The tasks and methods of a folder of checkpoints laid out as ``<task>/<method>/config.json``.

``assets/checkpoints`` is such a folder.

Only the config.json files are read (no weights), so a folder of many checkpoints lists quickly.
A task needs no entry in ``core.tasks.TASKS``: its labels and whether it takes a pair come from
its checkpoints' configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.checkpoint import CONFIG_FILE, read_config
from core.errors import UserError
from core.methods import METHODS
from core.tasks import TaskSpec, checkpoint_task


@dataclass(frozen=True)
class CatalogTask:
    """One task of a checkpoint folder: its spec (name, labels, pair) and each method's checkpoint folder."""

    spec: TaskSpec
    checkpoints: dict[str, Path]  # method -> folder, in the order of core.methods.METHODS

    @property
    def methods(self) -> list[str]:
        return list(self.checkpoints)


def read_catalog(root: str | Path) -> dict[str, CatalogTask]:
    """Every task under ``root`` by its name in config.json (``MRPC``, not the folder's ``mrpc``), tasks in name order.

    Folders without a config.json (and files such as a README) are passed over. Two checkpoints of
    one method for a task, or checkpoints of a task that disagree on its labels or pair, are refused.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"checkpoint folder {root} does not exist: pass a folder laid out as <task>/<method>/{CONFIG_FILE}"
        )
    found: dict[str, dict[str, Path]] = {}
    specs: dict[str, TaskSpec] = {}
    for path in sorted(root.glob(f"*/*/{CONFIG_FILE}")):
        folder = path.parent
        config = read_config(folder)
        spec = checkpoint_task(config.task, config.labels, config.pair)
        known = specs.setdefault(spec.name, spec)
        if (known.labels, known.pair) != (spec.labels, spec.pair):
            first = next(iter(found[spec.name].values()))
            raise UserError(
                f"{first} and {folder} are both {spec.name} checkpoints but disagree on its labels or "
                "sentence pairs: keep one task per name"
            )
        methods = found.setdefault(spec.name, {})
        if config.method in methods:
            raise UserError(
                f"{methods[config.method]} and {folder} are both {spec.name} {config.method} checkpoints: "
                "keep one of them"
            )
        methods[config.method] = folder
    if not found:
        raise UserError(f"no checkpoints in {root}: expected folders laid out as <task>/<method>/{CONFIG_FILE}")
    return {
        name: CatalogTask(specs[name], {method: found[name][method] for method in METHODS if method in found[name]})
        for name in sorted(found)
    }

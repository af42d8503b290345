"""GLUE tasks as ``datasets.Dataset`` objects, from a local ``glue_data`` folder or the hub.

The local files are the official GLUE TSVs. They must be read with quoting disabled (several
contain unbalanced double quotes that a quote-aware reader would merge into other rows), CoLA
has no header, and MRPC's header starts with a byte-order mark.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from core.errors import UserError
from core.tasks import TaskSpec, get_task

DEFAULT_DATA_DIR = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parent.parent.parent / "shared" / "glue"))
SPLIT_FILES = {"train": "train.tsv", "dev": "dev.tsv"}
HUB_SPLITS = {"train": "train", "dev": "validation"}


@dataclass(frozen=True)
class ValidationSplit:
    """Rows held out of the GLUE training file to choose operating points on (dev is only ever reported).

    The same seed always picks the same rows, so every stage of a recipe trains on the same
    remainder and never sees the rows its thresholds are chosen on.
    """

    fraction: float = 0.1
    max_rows: int = 2000
    seed: int = 2020

    def rows(self, total: int) -> int:
        return max(1, min(self.max_rows, round(self.fraction * total)))

    def to_dict(self, total: int) -> dict:
        return {"fraction": self.fraction, "max_rows": self.max_rows, "seed": self.seed, "rows": self.rows(total), "of": total}


VALIDATION = ValidationSplit()


@dataclass(frozen=True)
class TsvColumns:
    """Where a task's fields are: column names, or indices for a file without a header."""

    text: str | int
    label: str | int
    pair: str | int | None = None
    header: bool = True


COLUMNS = {
    "SST-2": TsvColumns("sentence", "label"),
    "CoLA": TsvColumns(3, 1, header=False),
    "MRPC": TsvColumns("#1 String", "Quality", "#2 String"),
    "RTE": TsvColumns("sentence1", "label", "sentence2"),
    "QNLI": TsvColumns("question", "label", "sentence"),
    "WNLI": TsvColumns("sentence1", "label", "sentence2"),
    "STS-B": TsvColumns("sentence1", "score", "sentence2"),
}
HUB_NAMES = {"SST-2": "sst2", "CoLA": "cola", "MRPC": "mrpc", "RTE": "rte", "QNLI": "qnli", "WNLI": "wnli", "STS-B": "stsb"}


def _label_value(spec: TaskSpec, raw: str) -> float | int:
    if spec.labels is None:
        return float(raw)
    if raw in spec.labels:
        return spec.labels.index(raw)
    return int(raw)


def read_tsv(path: Path, spec: TaskSpec) -> Dataset:
    columns = COLUMNS[spec.name]
    with path.open(encoding="utf-8-sig", newline="") as handle:  # utf-8-sig drops MRPC's byte-order mark
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if columns.header:
        header, rows = rows[0], rows[1:]
        position = {name: header.index(name) for name in (columns.text, columns.label, columns.pair) if name is not None}
    else:
        position = {index: index for index in (columns.text, columns.label, columns.pair) if index is not None}
    data = {
        "text": [row[position[columns.text]] for row in rows],
        "label": [_label_value(spec, row[position[columns.label]]) for row in rows],
    }
    if columns.pair is not None:
        data["text_pair"] = [row[position[columns.pair]] for row in rows]
    return Dataset.from_dict(data)


def carve_validation(train: Dataset, split: ValidationSplit = VALIDATION) -> tuple[Dataset, Dataset]:
    """(training rows, held-out validation rows) of a GLUE training set; disjoint, deterministic in ``split.seed``."""
    parts = train.train_test_split(test_size=split.rows(len(train)), seed=split.seed, shuffle=True)
    return parts["train"], parts["test"]


def load_split(task: str, split: str, data_dir: str | Path | None = None, from_hub: bool = False) -> Dataset:
    """A split with columns ``text``, ``label`` and, for pair tasks, ``text_pair``.

    ``train`` and ``dev`` are the GLUE files; ``fit`` is ``train`` without the held-out rows and
    ``validation`` those rows (``VALIDATION``): training uses ``fit``, operating points are
    chosen on ``validation``, results are reported on ``dev``.
    """
    if split in ("fit", "validation"):
        fit, validation = carve_validation(load_split(task, "train", data_dir, from_hub))
        return fit if split == "fit" else validation
    spec = get_task(task)
    if split not in SPLIT_FILES:
        raise UserError(f"unknown split {split!r}; use train, fit, validation or dev")
    if from_hub:
        from datasets import load_dataset

        hub = load_dataset("nyu-mll/glue", HUB_NAMES[spec.name], split=HUB_SPLITS[split])
        first, second = {"SST-2": ("sentence", None), "CoLA": ("sentence", None), "QNLI": ("question", "sentence")}.get(spec.name, ("sentence1", "sentence2"))
        renamed = {first: "text", **({second: "text_pair"} if second else {})}
        return hub.rename_columns(renamed).select_columns(["text", "label", *(["text_pair"] if second else [])])
    folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    path = folder / spec.name / SPLIT_FILES[split]
    if not folder.is_dir():
        raise UserError(f"GLUE data folder {folder} not found: pass --data-dir (a glue_data folder with <TASK>/{{train,dev}}.tsv) or set GLUE_DIR")
    if not path.is_file():
        raise UserError(f"{path} not found: the GLUE folder {folder} has no {split} split of {spec.name}")
    return read_tsv(path, spec)

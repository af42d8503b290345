"""Training data as ``datasets.Dataset`` objects with columns ``text``, ``label`` and (pairs) ``text_pair``.

GLUE tasks come from a local ``glue_data`` folder or the hub. The local files are the official
GLUE TSVs. They must be read with quoting disabled (several contain unbalanced double quotes that
a quote-aware reader would merge into other rows), CoLA has no header, and MRPC's header starts
with a byte-order mark.

A task of one's own comes from a CSV, TSV or JSON-lines file, or from a ``datasets`` dataset
(``DataSource``). Its classes are read off the label column; config.json records where the rows
came from (``training.data``), so calibration, evaluation and the benchmark reload the same splits
(``checkpoint_split``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import ClassLabel, Dataset, DatasetDict

from core.errors import UserError
from core.tasks import TaskSpec, find_task, get_task

if TYPE_CHECKING:
    from core.model import ModelConfig

DEFAULT_DATA_DIR = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parent.parent.parent / "shared" / "glue"))
SPLIT_FILES = {"train": "train.tsv", "dev": "dev.tsv"}
HUB_SPLITS = {"train": "train", "dev": "validation"}


@dataclass(frozen=True)
class ValidationSplit:
    """Rows held out of a task's training rows to choose operating points on (dev is only ever reported).

    The same seed always picks the same rows, so every stage of a recipe trains on the same
    remainder and never sees the rows its thresholds are chosen on.
    """

    fraction: float = 0.1
    max_rows: int = 2000
    seed: int = 2020

    def rows(self, total: int) -> int:
        return max(1, min(self.max_rows, round(self.fraction * total)))

    def to_dict(self, total: int) -> dict:
        return {
            "fraction": self.fraction,
            "max_rows": self.max_rows,
            "seed": self.seed,
            "rows": self.rows(total),
            "of": total,
        }


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
HUB_NAMES = {
    "SST-2": "sst2",
    "CoLA": "cola",
    "MRPC": "mrpc",
    "RTE": "rte",
    "QNLI": "qnli",
    "WNLI": "wnli",
    "STS-B": "stsb",
}


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
        position = {
            name: header.index(name) for name in (columns.text, columns.label, columns.pair) if name is not None
        }
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
    """(training rows, held-out rows) of a training set; disjoint, deterministic in ``split.seed``."""
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
        first, second = {
            "SST-2": ("sentence", None),
            "CoLA": ("sentence", None),
            "QNLI": ("question", "sentence"),
        }.get(spec.name, ("sentence1", "sentence2"))
        renamed = {first: "text", **({second: "text_pair"} if second else {})}
        return hub.rename_columns(renamed).select_columns(["text", "label", *(["text_pair"] if second else [])])
    folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    path = folder / spec.name / SPLIT_FILES[split]
    if not folder.is_dir():
        raise UserError(
            f"GLUE data folder {folder} not found: pass --data-dir (a glue_data folder with "
            f"<TASK>/{{train,dev}}.tsv) or set GLUE_DIR"
        )
    if not path.is_file():
        raise UserError(f"{path} not found: the GLUE folder {folder} has no {split} split of {spec.name}")
    return read_tsv(path, spec)


FILE_FORMATS = {
    ".csv": "CSV",
    ".tsv": "TSV",
    ".jsonl": "JSON",
    ".json": "JSON",
}  # JSON: one object per line, or one array of objects
DELIMITERS = {"CSV": ",", "TSV": "\t"}
DEV_CARVE = ValidationSplit(
    seed=2021
)  # the dev rows held out of a training file that comes without a dev file or split
MIN_TRAINING_ROWS = 10  # fewer cannot spare dev and validation rows and still train
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a task name is also a folder name (runs/<task>/<method>)


@dataclass(frozen=True)
class DataSource:
    """Where a task of one's own comes from and which columns hold what.

    It is recorded in config.json under ``training.data``.

    Exactly one of ``train_file`` (CSV, TSV, JSON lines; its format from its extension) and
    ``dataset`` (a ``datasets.load_dataset`` name or local folder) is set. Without ``dev_file``
    (or ``dev_split``, or a dataset's own ``validation`` split) the dev rows are carved from the
    training rows (``DEV_CARVE``), and the validation rows from what is left, as for GLUE.
    """

    text_column: str
    label_column: str
    pair_column: str | None = None
    regression: bool = False
    train_file: str | None = None
    dev_file: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    dev_split: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> DataSource:
        return cls(**{item.name: data.get(item.name, item.default) for item in fields(cls)})

    def columns(self) -> list[tuple[str, str]]:
        """(column, the option that names it) for each column the task reads."""
        named = [
            (self.text_column, "--text-column"),
            (self.pair_column, "--pair-column"),
            (self.label_column, "--label-column"),
        ]
        return [(name, option) for name, option in named if name is not None]

    def default_task_name(self) -> str:
        """The training file's stem, or the dataset's last path component (with its config)."""
        if self.train_file is not None:
            return Path(self.train_file).stem
        return Path(self.dataset).name + (f"-{self.dataset_config}" if self.dataset_config else "")

    def read(self) -> tuple[Table, Table | None]:
        """The training rows and the dev rows (None: carve them from the training rows)."""
        if self.train_file is not None:
            return read_table(Path(self.train_file)), None if self.dev_file is None else read_table(
                Path(self.dev_file)
            )
        return read_dataset(self.dataset, self.dataset_config, self.dev_split)


@dataclass
class Table:
    """Rows of a file or a dataset split, column by column, before they become a task's ``text``, ``label`` and
    ``text_pair``.
    """

    where: str  # the file, or the dataset and split, for messages
    columns: dict[str, list]
    classes: dict[str, list[str]] = field(
        default_factory=dict
    )  # the class names of each ``ClassLabel`` column (a ``datasets`` dataset)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def column(self, name: str, option: str) -> list:
        if name not in self.columns:
            raise UserError(f"{self.where} has no column {name!r} ({option}); its columns: {', '.join(self.columns)}")
        return self.columns[name]

    def texts(self, name: str, option: str) -> list[str]:
        values = self.column(name, option)
        for row, value in enumerate(values, start=1):
            if value is None or not str(value).strip():
                raise UserError(
                    f"{self.where}, row {row}: column {name!r} ({option}) is empty; every row needs a text"
                )
        return [str(value) for value in values]

    def label_names(self, name: str) -> list[str]:
        """Each row's label as a class name: a ``ClassLabel``'s name, or the value as text (``2``, not ``2.0``)."""
        names, known = [], self.classes.get(name)
        for row, value in enumerate(self.column(name, "--label-column"), start=1):
            if known is not None:
                if not (isinstance(value, int) and 0 <= value < len(known)):
                    raise UserError(
                        f"{self.where}, row {row}: label {value!r} is not one of the dataset's classes "
                        f"{', '.join(known)}"
                    )
                names.append(known[value])
            elif value is None or not str(value).strip():
                raise UserError(f"{self.where}, row {row}: no label in column {name!r}; every row needs one")
            else:
                names.append(
                    str(int(value)) if isinstance(value, float) and value.is_integer() else str(value).strip()
                )
        return names

    def scores(self, name: str) -> list[float]:
        if name in self.classes:
            raise UserError(
                f"{self.where}: column {name!r} holds classes ({', '.join(self.classes[name])}), not scores: "
                "leave out --regression"
            )
        scores = []
        for row, value in enumerate(self.column(name, "--label-column"), start=1):
            score = number(value)
            if score is None or isinstance(value, bool) or not math.isfinite(score):
                raise UserError(
                    f"{self.where}, row {row}: label {value!r} in column {name!r} is not a number, which "
                    "--regression needs"
                )
            scores.append(score)
        return scores


def number(value: object) -> float | None:
    """The value as a number, or None when it is not one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_table(path: Path) -> Table:
    """A CSV or TSV file (header line, standard quoting) or JSON lines (one object per line; ``.json`` may also hold
    one array of objects).
    """
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise UserError(
            f"{path}: cannot tell the format from {suffix or 'no extension'!r}; name the file .csv, .tsv, "
            ".jsonl or .json"
        )
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig drops a byte-order mark, as spreadsheets write one
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from error
    if not text.strip():
        raise UserError(f"{path} is empty")
    kind = FILE_FORMATS[suffix]
    rows = read_json_rows(path, text) if kind == "JSON" else read_delimited_rows(path, text, kind)
    if not rows:
        raise UserError(f"{path} has a header but no rows")
    names = list(dict.fromkeys(name for row in rows for name in row))
    return Table(str(path), {name: [row.get(name) for row in rows] for name in names})


def read_delimited_rows(path: Path, text: str, kind: str) -> list[dict]:
    try:
        header, *lines = list(csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITERS[kind]))
    except csv.Error as error:
        raise UserError(f"{path} is not a readable {kind} file: {error}") from error
    rows = []
    for row, values in enumerate(
        (values for values in lines if any(value.strip() for value in values)), start=1
    ):  # blank lines skipped
        if len(values) != len(header):
            raise UserError(
                f"{path}, row {row}: {len(values)} fields but the header has {len(header)} (a field holding "
                "the delimiter needs quotes)"
            )
        rows.append(dict(zip(header, values)))
    return rows


def read_json_rows(path: Path, text: str) -> list[dict]:
    """One object per line (blank lines skipped), or one array of objects; each object is a row."""
    array = text.lstrip().startswith("[")
    pieces = (
        [("the file", text)]
        if array
        else [(f"line {number}", line) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    )
    parsed = []
    for position, piece in pieces:
        try:
            parsed.append((position, json.loads(piece)))
        except json.JSONDecodeError as error:
            raise UserError(f"{path}, {position}: not valid JSON ({error})") from error
    if array:
        parsed = [(f"item {number}", row) for number, row in enumerate(parsed[0][1], start=1)]
    for position, row in parsed:
        if not isinstance(row, dict):
            raise UserError(f"{path}, {position}: not a JSON object (a row of named columns)")
    return [row for _, row in parsed]


def read_dataset(name: str, config: str | None, dev_split: str | None) -> tuple[Table, Table | None]:
    """The ``train`` split of a ``datasets`` dataset, and its dev rows.

    ``dev_split``, else its ``validation`` split, else None (carve).
    """
    from datasets import load_dataset

    try:
        loaded = load_dataset(name, config)
    except (OSError, ValueError) as error:  # not found, offline, unknown config
        raise UserError(
            f"cannot load dataset {name!r}{f' ({config})' if config else ''}: {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(loaded, DatasetDict) or "train" not in loaded:
        raise UserError(
            f"dataset {name!r} has no 'train' split; its splits: "
            f"{', '.join(loaded) if isinstance(loaded, DatasetDict) else 'none'}"
        )
    if dev_split is not None and dev_split not in loaded:
        raise UserError(f"dataset {name!r} has no {dev_split!r} split (--dev-split); its splits: {', '.join(loaded)}")
    chosen = dev_split or ("validation" if "validation" in loaded else None)

    def table(split: str) -> Table:
        part = loaded[split]
        if len(part) == 0:
            raise UserError(f"dataset {name!r}, split {split}: no rows")
        classes = {
            column: feature.names for column, feature in part.features.items() if isinstance(feature, ClassLabel)
        }
        return Table(
            f"dataset {name!r}, split {split}", {column: part[column] for column in part.column_names}, classes
        )

    train, dev = table("train"), None if chosen is None else table(chosen)
    return train, dev


def discover_classes(table: Table, column: str) -> list[str]:
    """The classes of a label column in a stable order.

    A ``ClassLabel``'s own order, whole numbers by value, other names sorted.

    A column of numbers that are not whole is refused: it is a score (``--regression``), not classes.
    """
    if column in table.classes:
        return list(table.classes[column])
    names = sorted(set(table.label_names(column)))
    values = [number(name) for name in names]
    if all(value is not None for value in values):
        fractional = [name for name, value in zip(names, values) if not value.is_integer()]
        if fractional:
            raise UserError(
                f"{table.where}: column {column!r} holds numbers that are not whole (such as {fractional[0]}): "
                "pass --regression to learn a score, or give the classes as whole numbers or names"
            )
        names = sorted(names, key=float)
    if len(names) < 2:
        raise UserError(
            f"{table.where}: column {column!r} holds only the class {names[0]!r}; a classifier needs at least "
            "two classes"
        )
    return names


def task_rows(table: Table, source: DataSource, labels: list[str] | None) -> Dataset:
    """The table as ``text``, ``label`` and, for pairs, ``text_pair``.

    ``label`` is the class index, or the score when ``labels`` is None.
    """
    data = {"text": table.texts(source.text_column, "--text-column")}
    if labels is None:
        data["label"] = table.scores(source.label_column)
    else:
        index = {name: position for position, name in enumerate(labels)}
        data["label"] = []
        for row, name in enumerate(table.label_names(source.label_column), start=1):
            if name not in index:
                raise UserError(
                    f"{table.where}, row {row}: label {name!r} is not one of the training rows' classes "
                    f"{', '.join(labels)}"
                )
            data["label"].append(index[name])
    if source.pair_column is not None:
        data["text_pair"] = table.texts(source.pair_column, "--pair-column")
    return Dataset.from_dict(data)


def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class OwnData:
    """A task of one's own: its spec (classes, pair), its training and dev rows, and what config.json records about
    them.
    """

    spec: TaskSpec
    train: Dataset  # the training rows (without the carved dev rows)
    dev: Dataset
    record: dict

    def split(self, name: str) -> Dataset:
        """``train``, ``dev``, or ``fit`` / ``validation``.

        The training rows without / only the held-out rows, as ``load_split``.
        """
        if name in ("fit", "validation"):
            fit, validation = carve_validation(self.train)
            return fit if name == "fit" else validation
        if name not in ("train", "dev"):
            raise UserError(f"unknown split {name!r}; use train, fit, validation or dev")
        return self.train if name == "train" else self.dev


def check_task_name(name: str, option: str) -> str:
    """A name a task of one's own can have.

    A folder name that is no GLUE task's (whose metric and checkpoints it would take).
    """
    if not TASK_NAME.fullmatch(name):
        raise UserError(
            f"task name {name!r} ({option}) may hold only letters, digits, '.', '_' and '-': pass --task-name NAME"
        )
    if find_task(name) is not None:
        raise UserError(
            f"task name {name!r} ({option}) is a GLUE task's: pass --task-name with another name, or --task "
            f"{name} for GLUE's own files"
        )
    return name


def load_own_data(
    source: DataSource, task: str, labels: list[str] | None = None, recorded: dict | None = None
) -> OwnData:
    """Read, check and split a task of one's own.

    In training, ``labels`` is None and the classes are read off the training rows. Reloading a
    checkpoint's data passes its ``labels`` and its ``recorded`` ``training.data``, and refuses a
    training file or dataset that changed since (its held-out rows would no longer be the same).
    """
    train_table, dev_table = source.read()
    for table in [train_table] if dev_table is None else [train_table, dev_table]:
        for name, option in source.columns():
            table.column(name, option)
    if len(train_table) < MIN_TRAINING_ROWS:
        raise UserError(
            f"{train_table.where}: {len(train_table)} row(s); training needs at least {MIN_TRAINING_ROWS} "
            "(dev and validation rows are held out)"
        )
    if labels is None and not source.regression:
        labels = discover_classes(train_table, source.label_column)
    whole = task_rows(train_table, source, labels)
    if labels is None and len(set(whole["label"])) < 2:
        raise UserError(
            f"{train_table.where}: every score in column {source.label_column!r} is {whole['label'][0]:g}; "
            "there is nothing to learn"
        )
    record = {
        "source": asdict(source),
        "train_rows": len(whole),
        "train_sha256": None if source.train_file is None else file_digest(source.train_file),
    }
    if recorded is not None and (recorded["train_rows"], recorded["train_sha256"]) != (
        record["train_rows"],
        record["train_sha256"],
    ):
        raise UserError(
            f"{train_table.where} changed since the checkpoint was trained: its held-out validation and dev "
            "rows would not be the same ones"
        )
    if dev_table is None:
        train, dev = carve_validation(whole, DEV_CARVE)
        record["dev_carved"] = DEV_CARVE.to_dict(len(whole))
    else:
        train, dev = whole, task_rows(dev_table, source, labels)
        record["dev_carved"] = None
    spec = TaskSpec(task, None if labels is None else tuple(labels), pair=source.pair_column is not None)
    return OwnData(spec, train, dev, record)


def checkpoint_split(config: ModelConfig, split: str, data_dir: str | Path | None = None) -> Dataset:
    """A split of the data a checkpoint was trained on.

    Its own file or dataset when config.json records one, else its GLUE task's.
    """
    recorded = config.training.get("data")
    if recorded is None:
        return load_split(config.task, split, data_dir)
    return load_own_data(DataSource.from_dict(recorded["source"]), config.task, config.labels, recorded).split(split)

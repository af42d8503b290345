"""The query log: every question asked in the demo, and per method what it answered and which layers ran.

Two tables in one SQLite file, written with ``sqlite-utils``: ``queries`` (one row per question)
and ``results`` (one row per query and method; ``query_id`` points at ``queries.id``). Their
columns are declared once, in ``QUERY_COLUMNS`` and ``RESULT_COLUMNS``: the tables are created,
rows written and read back, and JSON columns encoded and decoded from those two mappings.

All writes go through one writer thread with its own connection, so many requests at once
never contend for the write lock inside the app; the file is in WAL mode so readers (reports,
histograms) never block the writer. Every SQL statement takes its values as parameters.

Where the file goes: ``ADAPTIVE_BERT_QUERY_DB`` (a file), else ``ADAPTIVE_BERT_DATA_DIR`` (a folder
for the app's lasting data, e.g. a Space's persistent storage mounted at /data), else
``queries.db`` beside app.py. ``status`` says only on or off: visitors never see the server's
paths; the path and any error go to the server log (logger ``adaptive_bert.querylog``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlite_utils

from core.errors import UserError
from core.trace import Trace

DB_ENV = "ADAPTIVE_BERT_QUERY_DB"
DATA_DIR_ENV = "ADAPTIVE_BERT_DATA_DIR"
SWITCH_ENV = "ADAPTIVE_BERT_QUERY_LOG"
DB_NAME = "queries.db"
DEFAULT_DB = Path(__file__).resolve().parent.parent / DB_NAME  # beside app.py
logger = logging.getLogger("adaptive_bert.querylog")
OFF_VALUES = {"off", "0", "false", "no"}
BUSY_TIMEOUT_S = 30.0  # other processes (a report being written) may hold the lock briefly


@dataclass(frozen=True)
class Column:
    """One column of the log: its type as ``sqlite-utils`` creates it, what it holds (``description``), and whether it
    is kept as JSON text.
    """

    type: type
    description: str
    json: bool = False


QUERY_COLUMNS = {
    "id": Column(int, "the query's number (primary key)"),
    "time": Column(str, "when it was asked: UTC, ISO 8601"),
    "task": Column(str, "the task's name, e.g. MRPC"),
    "text": Column(str, "the text as the models read it"),
    "text_pair": Column(str, "the second sentence, for pair tasks"),
    "methods": Column(str, "the methods compared, in the order chosen", json=True),
    "settings": Column(str, "the run settings: thresholds per method, early exit, precision", json=True),
}
RESULT_COLUMNS = {
    "id": Column(int, "the result's number (primary key)"),
    "query_id": Column(int, "the query it answers (queries.id)"),
    "method": Column(str, "the method's name"),
    "probabilities": Column(str, "class probabilities (empty for regression)", json=True),
    "layers_executed": Column(str, "the layers that ran, 1-based", json=True),
    "layers_skipped": Column(str, "the layers a planner bypassed", json=True),
    "prediction": Column(str, "the answer: a label, or the score to four decimals"),
    "exit_layer": Column(int, "the layer after which the input left early; empty if it went to the end"),
    "num_layers": Column(int, "the model's layer count"),
    "latency_ms": Column(float, "the median latency of the runs, in milliseconds"),
    "expected_speedup": Column(float, "the speed-up its layer count allows"),
    "threshold": Column(float, "the knob value it ran with (empty for methods without one)"),
    "early_exit": Column(int, "whether early exit was on"),
    "truncated": Column(int, "whether the input was cut to the model's token limit"),
    "checkpoint": Column(str, "the checkpoint folder, relative to the project"),
    "trained": Column(int, "whether the method's heads were trained"),
}
TABLES = {"queries": QUERY_COLUMNS, "results": RESULT_COLUMNS}
TRACE_FIELDS = {
    field.name for field in fields(Trace)
}  # result columns named like a trace field are copied from the trace
READ_COLUMNS = {"query_id": ("results", RESULT_COLUMNS["query_id"])} | {
    name: (table, column)
    for table, columns in TABLES.items()
    for name, column in columns.items()
    if name not in ("id", "query_id")
}  # a row of read_results: every declared column but the row ids, as name -> (table, column)


def column_types(columns: dict[str, Column]) -> dict[str, type]:
    return {name: column.type for name, column in columns.items()}


def stored(columns: dict[str, Column], values: dict) -> dict:
    """A row as written: a value for every declared column but the row's own id (a missing one is a KeyError), JSON
    columns encoded.
    """
    return {
        name: json.dumps(values[name]) if column.json else values[name]
        for name, column in columns.items()
        if name != "id"
    }


def connect(path: str | Path) -> sqlite_utils.Database:
    """Open (and if needed create) the log database in WAL mode with its two tables."""
    connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    db = sqlite_utils.Database(connection)
    db.enable_wal()
    db["queries"].create(column_types(QUERY_COLUMNS), pk="id", if_not_exists=True)
    db["results"].create(
        column_types(RESULT_COLUMNS), pk="id", foreign_keys=[("query_id", "queries", "id")], if_not_exists=True
    )
    db["queries"].create_index(["time"], if_not_exists=True)
    db["results"].create_index(["query_id"], if_not_exists=True)
    return db


@dataclass(frozen=True)
class _Job:
    write: Callable[[sqlite_utils.Database], int]
    done: Future


class QueryLog:
    """Writes queries from any thread; ``enabled`` and ``status`` say whether logging works right now.

    A failure to open or write the database never reaches the caller: the query is answered
    anyway and ``status`` explains that logging is off.
    """

    def __init__(self, path: str | Path | None, disabled_reason: str | None = None):
        self.path = None if path is None else Path(path)
        self._error = disabled_reason or ("switched off" if path is None else None)
        self._public_error = self._error if self.path is None else None  # what visitors are told: never a path
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._start_lock = threading.Lock()
        if self._error is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                connect(self.path).close()
            except (sqlite3.Error, OSError) as error:
                self._fail(f"cannot open {self.path}: {error}", "the log file cannot be opened")
        if self.enabled:
            logger.info("query log: writing to %s", self.path)
        elif self.path is None:
            logger.info("query log: %s", self._error)

    @classmethod
    def from_env(cls) -> QueryLog:
        """The log the environment asks for: ``ADAPTIVE_BERT_QUERY_LOG=off`` disables it; ``ADAPTIVE_BERT_QUERY_DB``
        names the file, else ``ADAPTIVE_BERT_DATA_DIR`` a folder for it (persistent storage), else ``queries.db``
        beside app.py."""
        if os.environ.get(SWITCH_ENV, "on").strip().lower() in OFF_VALUES:
            return cls(None, disabled_reason=f"switched off ({SWITCH_ENV}={os.environ[SWITCH_ENV]})")
        return cls(default_path())

    @property
    def enabled(self) -> bool:
        return self._error is None

    @property
    def status(self) -> str:
        """``query log: on`` or ``query log: off (why)``, for visitors: no path, no error text that could hold one."""
        return (
            "query log: on"
            if self.enabled
            else f"query log: off ({self._public_error or 'the log cannot be written'})"
        )

    def _fail(self, detail: str, public: str) -> None:
        if self._error != detail:
            logger.warning("query log off: %s", detail)
        self._error, self._public_error = detail, public

    def record(
        self,
        task: str,
        text: str,
        text_pair: str | None,
        settings: dict,
        traces: list[Trace],
        trained: dict[str, bool],
    ) -> int | None:
        """Log one query and one result row per trace; return the query's id, or None if logging is off."""
        if self.path is None:
            return None
        self._ensure_writer()
        query = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "task": task,
            "text": text,
            "text_pair": text_pair,
            "methods": [trace.method for trace in traces],
            "settings": settings,
        }
        done: Future = Future()
        self._jobs.put(_Job(lambda db: _insert(db, query, traces, trained), done))
        try:
            query_id = done.result()
        except (sqlite3.Error, OSError) as error:
            self._fail(f"cannot write {self.path}: {error}", "the log file cannot be written; the server log says why")
            return None
        if self._error is not None:
            logger.info("query log: writing to %s again", self.path)
        self._error = self._public_error = None  # a write worked again (e.g. the disk had been full)
        return query_id

    def close(self) -> None:
        """Finish pending writes and stop the writer thread."""
        if self._writer is not None:
            self._jobs.put(None)
            self._writer.join()
            self._writer = None

    def _ensure_writer(self) -> None:
        with self._start_lock:
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_forever, name="query-log-writer", daemon=True)
                self._writer.start()

    def _write_forever(self) -> None:
        db: sqlite_utils.Database | None = None
        while (job := self._jobs.get()) is not None:
            try:
                db = db or connect(self.path)
                job.done.set_result(job.write(db))
            except Exception as error:  # handed to the waiting caller; the writer must outlive any one failure
                if db is not None:
                    db.close()
                db = None  # reopen on the next job: the file may be writable again
                job.done.set_exception(error)
        if db is not None:
            db.close()


def default_path() -> Path:
    """Where the log goes when nothing names the file: ``ADAPTIVE_BERT_DATA_DIR``/queries.db, else beside app.py."""
    if os.environ.get(DB_ENV, "").strip():
        return Path(os.environ[DB_ENV].strip())
    if os.environ.get(DATA_DIR_ENV, "").strip():
        return Path(os.environ[DATA_DIR_ENV].strip()) / DB_NAME
    return DEFAULT_DB


def _insert(db: sqlite_utils.Database, query: dict, traces: list[Trace], trained: dict[str, bool]) -> int:
    """Write one query row and its result rows in one transaction; return the query's id."""
    with db.atomic():
        query_id = db["queries"].insert(stored(QUERY_COLUMNS, query)).last_pk
        db["results"].insert_all(stored(RESULT_COLUMNS, result_values(query_id, trace, trained)) for trace in traces)
    return query_id


def result_values(query_id: int, trace: Trace, trained: dict[str, bool]) -> dict:
    """One result row before encoding.

    Every column named like a trace field is copied from it, the others are filled in here.
    """
    copied = {name: getattr(trace, name) for name in RESULT_COLUMNS if name in TRACE_FIELDS}
    prediction = trace.prediction if isinstance(trace.prediction, str) else f"{trace.prediction:.4f}"
    return copied | {"query_id": query_id, "prediction": prediction, "trained": trained.get(trace.method, False)}


RELATIVE_TIME = re.compile(r"^(\d+)\s*([hdw])$")


def parse_since(text: str | None) -> datetime | None:
    """A start time from ``2025-01-31``, ``2025-01-31T12:00`` (UTC unless it says otherwise) or ``24h`` / ``7d`` /
    ``2w`` ago.
    """
    if text is None or not text.strip():
        return None
    text = text.strip()
    relative = RELATIVE_TIME.match(text.lower())
    if relative:
        amount, unit = int(relative[1]), relative[2]
        return datetime.now(UTC) - timedelta(hours=amount * {"h": 1, "d": 24, "w": 24 * 7}[unit])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise UserError(
            f"cannot read the time {text!r}: give a date like 2025-01-31, a time like 2025-01-31T12:00, or "
            "24h / 7d / 2w"
        ) from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that can only read the log (a reader never creates or changes the file)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)


def holds_results(path: str | Path) -> bool:
    """Whether the query log at ``path`` holds any result (False where it does not exist or cannot be read)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        connection = open_read_only(path)
        try:
            return connection.execute("select exists(select 1 from results)").fetchone()[0] == 1
        finally:
            connection.close()
    except sqlite3.Error:
        return False


def read_results(
    path: str | Path, task: str | None = None, method: str | None = None, since: datetime | None = None
) -> list[dict]:
    """One row per query and method (the query's fields joined in), oldest first; JSON columns decoded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"query log {path} does not exist: run some queries in the demo first, or pass the right --db")
    conditions, params = [], []
    for column, value in (("queries.task", task), ("results.method", method)):
        if value:
            conditions.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        conditions.append("queries.time >= ?")
        params.append(since.astimezone(UTC).isoformat(timespec="milliseconds"))
    where = f"where {' and '.join(conditions)}" if conditions else ""
    selected = ", ".join(f"{table}.{name}" for name, (table, _) in READ_COLUMNS.items())
    sql = (
        f"select {selected} from results join queries on queries.id = results.query_id {where} order by "
        "queries.id, results.id"
    )
    try:
        db = sqlite_utils.Database(open_read_only(path))
        try:
            rows = list(db.query(sql, params))
        finally:
            db.close()
    except sqlite3.Error as error:
        raise UserError(f"cannot read the query log {path}: {error}") from error
    decoded = [name for name, (_, column) in READ_COLUMNS.items() if column.json]
    for row in rows:
        for name in decoded:
            if row[name] is not None:
                row[name] = json.loads(row[name])
    return rows

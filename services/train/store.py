"""The job store: every training task and its progress events.

A task is declared once: the `TaskRecord` dataclass below. The `tasks` table's columns, the
row-to-record conversion and the schema migration are all derived from its fields
(`dataclasses.fields`); the record-to-proto mapping (train/server.py) goes through
`json_format` by field name. The progress a worker reports (step, loss, learning rate…) is ONE
JSON column, `state`, whose numeric fields are those of the proto's `TrainingEvent`
(`PROGRESS_FIELDS`, derived from the descriptor) plus a free `metrics` map. The status words are
the proto enum's `(wintrain.api.v1.json_name)` words. Adding a metric therefore touches one
place: the `metrics` map needs no change at all, a first-class progress number is a field of
`TrainingEvent` (and `TrainingTask`) in train.proto.

The servicer, the scheduler and the worker use the store through the `TaskStore` protocol;
`open_store(config)` picks the backend from `storage.job_store`:
- `sqlite` (default): `<workspace>/jobs.db`, SQLite in WAL mode (`TrainJobStore`, here);
- a `postgresql://` URL: PostgreSQL through psycopg 3 (`store_pg.PgTaskStore`).

A task row holds the request, its state and its latest progress; the `events` table holds what
WatchTraining streams, numbered per task (1, 2, 3…) so a watcher can resume from the last number
it saw. Every change that matters is a conditional update inside one write transaction
(SQLite's `BEGIN IMMEDIATE`; PostgreSQL's transaction-scoped advisory lock gives the same one
writer at a time), so two writers never undo each other: a worker writes only while its task is
`running` under the attempt number it was started with (a worker left over from an earlier run
is fenced off), and terminal states are never overwritten.

Plain Python, no grpc (the generated message module only, for the declarations).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import typing
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Protocol

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor

import services  # noqa: F401 - makes the generated `wintrain` package importable
from services.common.config import ConfigError
from services.common.errors import Unavailable
from services.common.timestamps import now_iso  # noqa: F401 - also imported from here
from wintrain.api.v1 import options_pb2
from wintrain.train.v1 import train_pb2


def enum_words(enum: EnumDescriptor) -> dict[int, str]:
    """number -> the value's `(wintrain.api.v1.json_name)` word (its name when it has none);
    the unset value 0 is left out."""
    return {v.number: v.GetOptions().Extensions[options_pb2.json_name] or v.name for v in enum.values if v.number}


STATUS_WORDS = enum_words(train_pb2.TaskStatus.DESCRIPTOR)
EVENT_KIND_WORDS = enum_words(train_pb2.EventKind.DESCRIPTOR)

PENDING = STATUS_WORDS[train_pb2.TASK_STATUS_PENDING]
RUNNING = STATUS_WORDS[train_pb2.TASK_STATUS_RUNNING]
COMPLETED = STATUS_WORDS[train_pb2.TASK_STATUS_COMPLETED]
FAILED = STATUS_WORDS[train_pb2.TASK_STATUS_FAILED]
CANCELLED = STATUS_WORDS[train_pb2.TASK_STATUS_CANCELLED]
INTERRUPTED = STATUS_WORDS[train_pb2.TASK_STATUS_INTERRUPTED]
# Paused (PauseTraining, issue 19): the worker saved a checkpoint and exited; an end state
# that ResumeTraining continues, like cancelled and interrupted.
PAUSED = STATUS_WORDS.get(getattr(train_pb2, "TASK_STATUS_PAUSED", -1), "paused")
STATUSES = tuple(STATUS_WORDS.values())
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, INTERRUPTED, PAUSED})
LIVE = frozenset({PENDING, RUNNING})
RESUMABLE = frozenset({FAILED, CANCELLED, INTERRUPTED, PAUSED})

EVENT_STATUS = EVENT_KIND_WORDS[train_pb2.EVENT_KIND_STATUS]
EVENT_PROGRESS = EVENT_KIND_WORDS[train_pb2.EVENT_KIND_PROGRESS]
EVENT_EVAL = EVENT_KIND_WORDS[train_pb2.EVENT_KIND_EVAL]
EVENT_CHECKPOINT = EVENT_KIND_WORDS[train_pb2.EVENT_KIND_CHECKPOINT]
EVENT_KINDS = (EVENT_STATUS, EVENT_PROGRESS, EVENT_EVAL, EVENT_CHECKPOINT)

# The progress numbers a worker may set: TrainingEvent's fields other than the envelope.
_EVENT_ENVELOPE = frozenset({"sequence", "task_id", "kind", "status", "message", "timestamp", "metrics"})
_PY_TYPES = {
    FieldDescriptor.CPPTYPE_DOUBLE: float, FieldDescriptor.CPPTYPE_FLOAT: float,
    FieldDescriptor.CPPTYPE_INT32: int, FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT32: int, FieldDescriptor.CPPTYPE_UINT64: int,
}
PROGRESS_FIELDS: dict[str, type] = {
    f.name: _PY_TYPES[f.cpp_type] for f in train_pb2.TrainingEvent.DESCRIPTOR.fields
    if f.name not in _EVENT_ENVELOPE and f.cpp_type in _PY_TYPES
}


def initial_state() -> dict[str, Any]:
    """A task's progress before its first report: every number 0, no metrics."""
    return {**{name: kind() for name, kind in PROGRESS_FIELDS.items()}, "metrics": {}}


def merge_state(state: dict[str, Any], values: dict[str, Any] | None = None,
                metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """`state` with progress `values` (checked against PROGRESS_FIELDS, typed) and `metrics`
    merged in. Raises ValueError on an unknown progress field."""
    out = {**initial_state(), **state}
    for name, value in (values or {}).items():
        if name not in PROGRESS_FIELDS:
            raise ValueError(f"unknown progress field {name!r}")
        out[name] = PROGRESS_FIELDS[name](value)
    if metrics:
        out["metrics"] = {**out.get("metrics", {}), **{k: float(v) for k, v in metrics.items()}}
    return out


# Schema 1 had one column per progress number and `*_json` columns; 2 derives the columns from
# TaskRecord (progress in the `state` JSON column). Fields added to TaskRecord later are added
# to existing tables as columns with their type's default, without a version step.
SCHEMA_VERSION = 2
# In a workspace shared by train-service replicas: the id of the job store it belongs to.
WORKSPACE_MARKER = ".wintrain-job-store"


def run_dir(workspace: Path, task_id: str) -> Path:
    """The task's own folder: checkpoints, worker.log, training_log.jsonl."""
    return Path(workspace) / "runs" / task_id


@dataclass
class TaskRecord:
    """One task row; each field is a column of the same name (dicts are JSON text, bools 0/1).

    `config` is the TrainingConfig as a dict (proto field names, defaults filled); `resolved`
    the absolute paths the worker uses; `state` the latest progress (PROGRESS_FIELDS and a
    `metrics` map), also readable as attributes (`task.loss`, `task.metrics`)."""

    seq: int
    task_id: str
    status: str
    strategy: str
    dataset_path: str
    eval_dataset_path: str
    output_dir: str
    config: dict[str, Any]
    resolved: dict[str, Any]
    created_at: str
    queued_at: str
    started_at: str
    completed_at: str
    error_message: str
    message: str
    state: dict[str, Any]
    last_checkpoint: str
    resume_from: str
    cancel_requested: bool
    attempt: int
    worker_pid: int
    worker_error: str
    last_sequence: int
    # The train-service replica running it, and until when (epoch seconds) its lease holds
    # without a heartbeat; 0: no lease (a single service on SQLite).
    replica_id: str
    lease_expires: float

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not fields: the progress numbers and metrics.
        state = self.__dict__.get("state")
        if state is not None and (name in PROGRESS_FIELDS or name == "metrics"):
            return state.get(name, {} if name == "metrics" else PROGRESS_FIELDS[name]())
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def progress_state(self) -> dict[str, Any]:
        """The progress fields and metrics, as stored in an event."""
        return merge_state(self.state)


TASK_COLUMNS: dict[str, type] = {f.name: typing.get_type_hints(TaskRecord)[f.name] for f in fields(TaskRecord)}


def _python_type(hint: Any) -> type:
    return typing.get_origin(hint) or hint


def encode_value(name: str, value: Any) -> Any:
    """A record field's value as stored in its column."""
    kind = _python_type(TASK_COLUMNS[name])
    if kind is dict:
        return json.dumps(value or {}, ensure_ascii=False)
    if kind is bool:
        return int(bool(value))
    return value


def task_from_row(row: Any) -> TaskRecord:
    """A TaskRecord from a row (mapping by column name) of the `tasks` table."""
    values: dict[str, Any] = {}
    for name, hint in TASK_COLUMNS.items():
        kind, raw = _python_type(hint), row[name]
        values[name] = json.loads(raw) if kind is dict else kind(raw)
    return TaskRecord(**values)


@dataclass
class EventRecord:
    """One stored event: the task's state after it, plus what happened."""

    task_id: str
    sequence: int
    kind: str
    status: str
    timestamp: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return str(self.data.get("message", ""))


class OutputInUse(Exception):
    """The output folder is (inside, or holds) the output folder of another live task."""

    def __init__(self, out: str, task_id: str, status: str):
        super().__init__(f"{out} is the output folder of task {task_id} ({status})")
        self.out, self.task_id, self.status = out, task_id, status


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


class StoreError(ConfigError):
    """The job store cannot be opened or has an unknown schema (start-up stops)."""


class StoreUnavailable(Unavailable):
    """The job store's database cannot be reached now (UNAVAILABLE; the service turns
    NOT_SERVING until it is back)."""


class TaskStore(Protocol):
    """What the servicer, the scheduler and the worker need of a job store. Every method that
    changes a task is one transaction with the condition it names."""

    def get(self, task_id: str) -> TaskRecord | None: ...
    def list_page(self, limit: int, before_seq: int | None = None) -> list[TaskRecord]: ...
    def with_status(self, *statuses: str) -> list[TaskRecord]: ...
    def queue(self) -> list[str]: ...
    def status_counts(self) -> dict[str, int]: ...
    def queue_position(self, task_id: str) -> int: ...
    def output_dirs(self) -> list[str]: ...
    def live_owner(self, output_dir: str, own_task: str = "") -> TaskRecord | None: ...
    def previous_tasks_for_output(self, output_dir: str) -> list[TaskRecord]: ...
    def events_after(self, task_id: str, after: int, limit: int = 500) -> list[EventRecord]: ...
    async def wait_for_events(self, task_id: str, after: int, timeout: float) -> None: ...
    def create(self, *, task_id: str, strategy: str, dataset_path: str, eval_dataset_path: str,
               output_dir: str, config: dict[str, Any], resolved: dict[str, Any],
               message: str = "queued", resume_from: str = "") -> TaskRecord: ...
    def claim(self, task_id: str, message: str = "starting the worker", *, replica_id: str = "",
              lease_seconds: float = 0.0) -> int | None: ...
    def claim_next(self, replica_id: str, lease_seconds: float,
                   message: str = "starting the worker") -> tuple[str, int] | None: ...
    def renew_leases(self, replica_id: str, lease_seconds: float, task_ids: list[str] | None = None) -> int: ...
    def expire_leases(self, reason: str) -> list[TaskRecord]: ...
    def bind_workspace(self, workspace: Path) -> None: ...
    def set_worker_pid(self, task_id: str, attempt: int, pid: int) -> None: ...
    def report(self, task_id: str, attempt: int, kind: str, *, fields: dict[str, Any] | None = None,
               metrics: dict[str, float] | None = None, message: str | None = None,
               last_checkpoint: str | None = None, event: bool = True) -> bool: ...
    def note_worker_error(self, task_id: str, attempt: int, text: str) -> None: ...
    def finish(self, task_id: str, status: str, *, message: str, attempt: int | None = None,
               from_statuses: tuple[str, ...] = (RUNNING,), error_message: str | None = None,
               fields: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> bool: ...
    def request_cancel(self, task_id: str) -> str: ...
    def worker_view(self, task_id: str) -> tuple[str, int, bool]: ...
    def requeue(self, task_id: str, *, resume_from: str, message: str) -> bool: ...
    def interrupt_running(self, reason: str, replica_id: str | None = None) -> list[TaskRecord]: ...
    def add_event(self, task_id: str, kind: str, message: str, extra: dict[str, Any] | None = None) -> int: ...
    def close(self) -> None: ...


def open_store(config: Any, workspace: Path | None = None) -> TaskStore:
    """The job store `storage.job_store` names: `sqlite` (default; `<workspace>/jobs.db`) or
    a `postgresql://` URL."""
    where = str(config.get("storage.job_store", "sqlite") or "sqlite").strip()
    if where == "sqlite":
        return TrainJobStore(Path(workspace or config.workspace) / "jobs.db")
    if where.startswith(("postgresql://", "postgres://")):
        from services.train.store_pg import PgTaskStore

        return PgTaskStore(where)
    raise StoreError(f"config: storage.job_store must be `sqlite` or a postgresql:// URL, got {where!r}")


class SqlTaskStore:
    """The store's logic over a DB-API connection; a backend gives connections, the write
    transaction and its SQL dialect (statements here use `?` placeholders)."""

    placeholder = "?"
    shared = False  # True: several services may use this store at once (leases, replicas)
    _skip_locked = ""  # PostgreSQL: FOR UPDATE SKIP LOCKED
    _seq_column = "INTEGER PRIMARY KEY AUTOINCREMENT"
    _types = {str: "TEXT NOT NULL DEFAULT ''", int: "INTEGER NOT NULL DEFAULT 0",
              float: "REAL NOT NULL DEFAULT 0", bool: "INTEGER NOT NULL DEFAULT 0",
              dict: "TEXT NOT NULL DEFAULT '{}'"}
    _events_suffix = " WITHOUT ROWID"

    # -- backend hooks --------------------------------------------------------------------
    def _conn(self) -> Any:
        raise NotImplementedError

    @contextmanager
    def _write(self) -> Iterator[Any]:
        raise NotImplementedError
        yield

    def _existing_columns(self, con: Any) -> set[str]:
        raise NotImplementedError

    def _notify(self, con: Any, task_id: str) -> None:
        """Tell watchers (at commit) that `task_id` has a new event; nothing by default."""

    # -- per-thread connections (one per thread, per process after a fork) ------------------
    _driver_error: type[BaseException] = Exception  # what closing a connection may raise

    def _init_connections(self) -> None:
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _thread_conn(self) -> Any:
        """This thread's connection, when it was opened in this process; else None."""
        con = getattr(self._local, "con", None)
        return con if con is not None and self._local.pid == os.getpid() else None

    def _keep_conn(self, con: Any) -> Any:
        """Remember `con` as this thread's connection (closed by `close`); returns it."""
        self._local.con, self._local.pid = con, os.getpid()
        with self._lock:
            self._all.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            for con in self._all:
                try:
                    con.close()
                except self._driver_error:
                    pass
            self._all.clear()
        self._local = threading.local()

    async def wait_for_events(self, task_id: str, after: int, timeout: float) -> None:
        """Return when `task_id` may have events after `after`, at the latest after `timeout`
        seconds (bounded polling, unless the backend is told of new events)."""
        await asyncio.sleep(timeout)

    # -- SQL ------------------------------------------------------------------------------
    def _x(self, con: Any, sql: str, args: tuple | list = ()) -> Any:
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        return con.execute(sql, tuple(args))

    def _column_sql(self, name: str) -> str:
        if name == "seq":
            return self._seq_column
        if name == "task_id":
            return "TEXT NOT NULL UNIQUE"
        return self._types[_python_type(TASK_COLUMNS[name])]

    def schema_statements(self) -> list[str]:
        columns = ",\n    ".join(f"{name} {self._column_sql(name)}" for name in TASK_COLUMNS)
        return [
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS tasks (\n    {columns}\n)",
            "CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, queued_at, seq)",
            "CREATE TABLE IF NOT EXISTS events (task_id TEXT NOT NULL, sequence BIGINT NOT NULL, kind TEXT NOT NULL,"
            " status TEXT NOT NULL, timestamp TEXT NOT NULL, data_json TEXT NOT NULL,"
            f" PRIMARY KEY (task_id, sequence)){self._events_suffix}",
        ]

    def _prepare_schema(self, con: Any) -> None:
        """In a write transaction: record the schema version, migrate an older one, add the
        columns of fields TaskRecord gained since."""
        row = self._x(con, "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._x(con, "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        else:
            version = int(row["value"])
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.describe()}: job store schema {version} is newer than this service "
                                 f"understands ({SCHEMA_VERSION})")
            if version < 2:
                self._migrate_v1(con)
            if version != SCHEMA_VERSION:
                self._x(con, "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        for name in TASK_COLUMNS:
            if name not in self._existing_columns(con):
                self._x(con, f"ALTER TABLE tasks ADD COLUMN {name} {self._column_sql(name)}")

    def _migrate_v1(self, con: Any) -> None:
        """Schema 1 -> 2: progress columns and metrics_json into `state`; `*_json` renamed."""
        old = [dict(r) for r in self._x(con, "SELECT * FROM tasks ORDER BY seq").fetchall()]
        self._x(con, "DROP INDEX IF EXISTS tasks_by_status")
        self._x(con, "ALTER TABLE tasks RENAME TO tasks_v1")
        for statement in self.schema_statements()[1:3]:
            self._x(con, statement)
        for row in old:
            state = {name: row[name] for name in PROGRESS_FIELDS if name in row}
            state["metrics"] = json.loads(row.get("metrics_json") or "{}")
            row["state"] = json.dumps(merge_state(state))
            row["config"], row["resolved"] = row.get("config_json", "{}"), row.get("resolved_json", "{}")
            names = [n for n in TASK_COLUMNS if n in row]
            self._x(con, f"INSERT INTO tasks ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                    [row[n] for n in names])
        self._x(con, "DROP TABLE tasks_v1")

    def describe(self) -> str:
        return "storage.job_store"

    def bind_workspace(self, workspace: Path) -> None:
        """Replicas sharing this store must share one workspace (checkpoints, outputs): the
        store keeps a workspace id, the workspace a marker file holding it. The first service
        writes both; a service whose workspace lacks the marker, or holds another id, stops."""
        marker = Path(workspace) / WORKSPACE_MARKER
        with self._write() as con:
            row = self._x(con, "SELECT value FROM meta WHERE key = 'workspace_id'").fetchone()
            found = marker.read_text(encoding="utf-8").strip() if marker.is_file() else ""
            if row is None:
                ident = found or uuid.uuid4().hex
                self._x(con, "INSERT INTO meta (key, value) VALUES ('workspace_id', ?)", (ident,))
                if not found:
                    from services.common.fsutil import atomic_write_text

                    marker.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(marker, ident + "\n")
                return
            if found != row["value"]:
                seen = f"holds {found!r}" if found else "is missing"
                raise StoreError(
                    f"storage.workspace: {workspace} is not the shared workspace of the job store "
                    f"({self.describe()}): its marker {marker.name} {seen}, the store expects {row['value']!r}; "
                    f"every train service on this store must mount the same workspace")

    # -- events ---------------------------------------------------------------------------
    def _task_in(self, con: Any, task_id: str) -> TaskRecord | None:
        row = self._x(con, "SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return task_from_row(row) if row else None

    def _append_event(self, con: Any, task_id: str, kind: str, message: str = "",
                      extra: dict[str, Any] | None = None) -> int:
        """Add an event carrying the task's state as it is now in this transaction."""
        self._x(con, "UPDATE tasks SET last_sequence = last_sequence + 1 WHERE task_id = ?", (task_id,))
        task = self._task_in(con, task_id)
        assert task is not None
        data = task.progress_state()
        data["message"] = message
        if extra:
            data.update(extra)
        self._x(con, "INSERT INTO events (task_id, sequence, kind, status, timestamp, data_json)"
                     " VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, task.last_sequence, kind, task.status, now_iso(), json.dumps(data, ensure_ascii=False)))
        self._notify(con, task_id)
        return task.last_sequence

    def add_event(self, task_id: str, kind: str, message: str, extra: dict[str, Any] | None = None) -> int:
        """An event on a task in any state, changing nothing else (a webhook delivery attempt
        after the task ended). Returns its sequence, 0 for an unknown task."""
        with self._write() as con:
            if self._task_in(con, task_id) is None:
                return 0
            return self._append_event(con, task_id, kind, message, extra)

    def events_after(self, task_id: str, after: int, limit: int = 500) -> list[EventRecord]:
        rows = self._x(self._conn(), "SELECT * FROM events WHERE task_id = ? AND sequence > ? ORDER BY sequence"
                                     " LIMIT ?", (task_id, after, limit)).fetchall()
        return [EventRecord(r["task_id"], int(r["sequence"]), r["kind"], r["status"], r["timestamp"],
                            json.loads(r["data_json"])) for r in rows]

    # -- reading tasks --------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        return self._task_in(self._conn(), task_id)

    def list_page(self, limit: int, before_seq: int | None = None) -> list[TaskRecord]:
        """Tasks newest first; `before_seq` continues after the last task of a previous page."""
        if before_seq is None:
            rows = self._x(self._conn(), "SELECT * FROM tasks ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self._x(self._conn(), "SELECT * FROM tasks WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                           (before_seq, limit)).fetchall()
        return [task_from_row(r) for r in rows]

    def _with_status(self, con: Any, statuses: tuple[str, ...] | list[str]) -> list[TaskRecord]:
        marks = ",".join("?" for _ in statuses)
        rows = self._x(con, f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY queued_at, seq",
                       tuple(statuses)).fetchall()
        return [task_from_row(r) for r in rows]

    def with_status(self, *statuses: str) -> list[TaskRecord]:
        return self._with_status(self._conn(), statuses)

    def queue(self) -> list[str]:
        """Ids of pending tasks in the order they will start."""
        rows = self._x(self._conn(), "SELECT task_id FROM tasks WHERE status = ? ORDER BY queued_at, seq",
                       (PENDING,)).fetchall()
        return [r["task_id"] for r in rows]

    def status_counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        rows = self._x(self._conn(), "SELECT status, COUNT(*) AS n FROM tasks GROUP BY status").fetchall()
        return {r["status"]: int(r["n"]) for r in rows}

    def queue_position(self, task_id: str) -> int:
        """0 for the next task to start; -1 when the task is not pending."""
        order = self.queue()
        return order.index(task_id) if task_id in order else -1

    def output_dirs(self) -> list[str]:
        """Every resolved output folder a task wrote (or meant to write) into."""
        rows = self._x(self._conn(), "SELECT resolved FROM tasks").fetchall()
        found = {json.loads(r["resolved"]).get("output_dir", "") for r in rows}
        return sorted(d for d in found if d)

    def _live_owner(self, con: Any, out: str, own_task: str = "") -> TaskRecord | None:
        """The live task (other than `own_task`) whose resolved output folder overlaps `out`."""
        for task in self._with_status(con, sorted(LIVE)):
            other = task.resolved.get("output_dir", "")
            if task.task_id != own_task and other and _overlaps(Path(other), Path(out)):
                return task
        return None

    def live_owner(self, output_dir: str, own_task: str = "") -> TaskRecord | None:
        """The live task other than `own_task` that writes into (or around) `output_dir`."""
        return self._live_owner(self._conn(), output_dir, own_task)

    def previous_tasks_for_output(self, output_dir: str) -> list[TaskRecord]:
        """Tasks that wrote (or meant to write) into this resolved output folder, newest first."""
        rows = self._x(self._conn(), "SELECT * FROM tasks ORDER BY seq DESC").fetchall()
        return [t for t in map(task_from_row, rows) if t.resolved.get("output_dir") == output_dir]

    # -- lifecycle --------------------------------------------------------------------------
    def create(self, *, task_id: str, strategy: str, dataset_path: str, eval_dataset_path: str,
               output_dir: str, config: dict[str, Any], resolved: dict[str, Any],
               message: str = "queued", resume_from: str = "") -> TaskRecord:
        """Store a new pending task and its first event. Returns the stored record. Raises
        OutputInUse, storing nothing, when a live task owns `resolved["output_dir"]`: the
        check and the insert are one transaction, so two concurrent starts cannot both pass."""
        stamp = now_iso()
        values = dict(task_id=task_id, status=PENDING, strategy=strategy, dataset_path=dataset_path,
                      eval_dataset_path=eval_dataset_path, output_dir=output_dir, config=config,
                      resolved=resolved, created_at=stamp, queued_at=stamp, message=message,
                      resume_from=resume_from, state=initial_state())
        with self._write() as con:
            out = str(resolved.get("output_dir", ""))
            owner = self._live_owner(con, out) if out else None
            if owner is not None:
                raise OutputInUse(out, owner.task_id, owner.status)
            self._x(con, f"INSERT INTO tasks ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                    [encode_value(k, v) for k, v in values.items()])
            self._append_event(con, task_id, EVENT_STATUS, message)
        record = self.get(task_id)
        assert record is not None
        return record

    def _claim_in(self, con: Any, task_id: str, message: str, replica_id: str, lease_seconds: float) -> int | None:
        lease = time.time() + lease_seconds if lease_seconds > 0 else 0.0
        cur = self._x(con,
                      "UPDATE tasks SET status = ?, attempt = attempt + 1, started_at = ?, completed_at = '',"
                      " cancel_requested = 0, worker_pid = 0, worker_error = '', error_message = '', message = ?,"
                      " replica_id = ?, lease_expires = ? WHERE task_id = ? AND status = ?",
                      (RUNNING, now_iso(), message, replica_id, lease, task_id, PENDING))
        if cur.rowcount == 0:
            return None
        self._append_event(con, task_id, EVENT_STATUS, message)
        return int(self._x(con, "SELECT attempt FROM tasks WHERE task_id = ?", (task_id,)).fetchone()["attempt"])

    def claim(self, task_id: str, message: str = "starting the worker", *, replica_id: str = "",
              lease_seconds: float = 0.0) -> int | None:
        """pending -> running with a new attempt number (returned); None if not pending. With
        `lease_seconds`, `replica_id` holds the task until then unless it renews the lease."""
        with self._write() as con:
            return self._claim_in(con, task_id, message, replica_id, lease_seconds)

    def claim_next(self, replica_id: str, lease_seconds: float,
                   message: str = "starting the worker") -> tuple[str, int] | None:
        """The first pending task in queue order becomes `replica_id`'s, running under a lease:
        (task_id, attempt), or None when nothing is queued. The row is taken with
        SELECT … FOR UPDATE SKIP LOCKED on PostgreSQL, so replicas never claim one task twice."""
        with self._write() as con:
            row = self._x(con, f"SELECT task_id FROM tasks WHERE status = ? ORDER BY queued_at, seq LIMIT 1"
                               f"{self._skip_locked}", (PENDING,)).fetchone()
            if row is None:
                return None
            attempt = self._claim_in(con, row["task_id"], message, replica_id, lease_seconds)
            return (row["task_id"], attempt) if attempt is not None else None

    def renew_leases(self, replica_id: str, lease_seconds: float, task_ids: list[str] | None = None) -> int:
        """The heartbeat: `replica_id`'s running tasks (those of `task_ids`, when given: the
        ones it has a worker for) are held `lease_seconds` longer."""
        if task_ids is not None and not task_ids:
            return 0
        only = f" AND task_id IN ({','.join('?' for _ in task_ids)})" if task_ids else ""
        with self._write() as con:
            cur = self._x(con, "UPDATE tasks SET lease_expires = ? WHERE replica_id = ? AND status = ?"
                               f" AND lease_expires > 0{only}",
                          (time.time() + lease_seconds, replica_id, RUNNING, *(task_ids or ())))
            return int(cur.rowcount)

    def expire_leases(self, reason: str) -> list[TaskRecord]:
        """Running tasks whose lease ran out (their replica died) become `interrupted`, each
        under its attempt (a late heartbeat or worker write is fenced off). Returns them."""
        rows = self._x(self._conn(), "SELECT * FROM tasks WHERE status = ? AND lease_expires > 0"
                                     " AND lease_expires < ?", (RUNNING, time.time())).fetchall()
        found = [task_from_row(r) for r in rows]
        return [t for t in found if self.finish(t.task_id, INTERRUPTED, message=reason, error_message=reason,
                                                attempt=t.attempt)]

    def set_worker_pid(self, task_id: str, attempt: int, pid: int) -> None:
        with self._write() as con:
            self._x(con, "UPDATE tasks SET worker_pid = ? WHERE task_id = ? AND attempt = ?", (pid, task_id, attempt))

    def report(self, task_id: str, attempt: int, kind: str, *, fields: dict[str, Any] | None = None,
               metrics: dict[str, float] | None = None, message: str | None = None,
               last_checkpoint: str | None = None, event: bool = True) -> bool:
        """A worker's progress: update the running task (merging `metrics`) and add an event.
        Returns False, writing nothing, when the task is no longer running under `attempt`."""
        merge_state({}, fields)  # an unknown field is refused before anything is read
        sets, args = [], []
        if message is not None:
            sets.append("message = ?")
            args.append(message)
        if last_checkpoint is not None:
            sets.append("last_checkpoint = ?")
            args.append(last_checkpoint)
        with self._write() as con:
            row = self._x(con, "SELECT state FROM tasks WHERE task_id = ? AND attempt = ? AND status = ?",
                          (task_id, attempt, RUNNING)).fetchone()
            if row is None:
                return False
            if fields or metrics:
                sets.append("state = ?")
                args.append(json.dumps(merge_state(json.loads(row["state"]), fields, metrics)))
            if sets:
                self._x(con, f"UPDATE tasks SET {', '.join(sets)} WHERE task_id = ?", (*args, task_id))
            if event:
                self._append_event(con, task_id, kind, message or "")
        return True

    def note_worker_error(self, task_id: str, attempt: int, text: str) -> None:
        """The worker's own account of why it is about to fail (the server adds stderr)."""
        with self._write() as con:
            self._x(con, "UPDATE tasks SET worker_error = ? WHERE task_id = ? AND attempt = ?",
                    (text[:4000], task_id, attempt))

    def finish(self, task_id: str, status: str, *, message: str, attempt: int | None = None,
               from_statuses: tuple[str, ...] = (RUNNING,), error_message: str | None = None,
               fields: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> bool:
        """Move a task to a terminal `status` if it is in `from_statuses` (and under `attempt`
        when given). Returns False, changing nothing, otherwise."""
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a terminal status")
        merge_state({}, fields)
        sets = ["status = ?", "completed_at = ?", "message = ?", "state = ?"]
        where = f"task_id = ? AND status IN ({','.join('?' for _ in from_statuses)})"
        wargs: list[Any] = [task_id, *from_statuses]
        if attempt is not None:
            where += " AND attempt = ?"
            wargs.append(attempt)
        with self._write() as con:
            row = self._x(con, f"SELECT state FROM tasks WHERE {where}", wargs).fetchone()
            if row is None:
                return False
            state = merge_state(json.loads(row["state"]), {**(fields or {}), "eta_seconds": 0}, metrics)
            args: list[Any] = [status, now_iso(), message, json.dumps(state)]
            if error_message is not None:
                sets.append("error_message = ?")
                args.append(error_message)
            cur = self._x(con, f"UPDATE tasks SET {', '.join(sets)} WHERE {where}", (*args, *wargs))
            if cur.rowcount == 0:
                return False
            self._append_event(con, task_id, EVENT_STATUS, message)
        return True

    def request_cancel(self, task_id: str) -> str:
        """Cancel a task. Returns what happened: "cancelled" (it was pending and is now
        cancelled), "signalled" (it is running; the flag is set for its worker), or "ended"
        (it had already ended), "unknown" (no such task)."""
        with self._write() as con:
            row = self._x(con, "SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                return "unknown"
            if row["status"] == PENDING:
                self._x(con, "UPDATE tasks SET status = ?, completed_at = ?, message = ? WHERE task_id = ?",
                        (CANCELLED, now_iso(), "cancelled before it started", task_id))
                self._append_event(con, task_id, EVENT_STATUS, "cancelled before it started")
                return "cancelled"
            if row["status"] == RUNNING:
                self._x(con, "UPDATE tasks SET cancel_requested = 1, message = ? WHERE task_id = ?",
                        ("cancelling: the worker stops at its next step and saves a checkpoint", task_id))
                self._append_event(con, task_id, EVENT_STATUS, "cancel requested")
                return "signalled"
            return "ended"

    def worker_view(self, task_id: str) -> tuple[str, int, bool]:
        """(status, attempt, cancel_requested), cheap enough to read at every step."""
        row = self._x(self._conn(), "SELECT status, attempt, cancel_requested FROM tasks WHERE task_id = ?",
                      (task_id,)).fetchone()
        if row is None:
            return ("", 0, False)
        return (row["status"], int(row["attempt"]), bool(row["cancel_requested"]))

    def requeue(self, task_id: str, *, resume_from: str, message: str) -> bool:
        """An ended (failed, cancelled, interrupted) task goes back to the queue, to continue
        from `resume_from`. Returns False if it is not in one of those states. Raises
        OutputInUse when another live task owns its output folder (checked in the same
        transaction)."""
        marks = ",".join("?" for _ in RESUMABLE)
        with self._write() as con:
            task = self._task_in(con, task_id)
            out = str(task.resolved.get("output_dir", "")) if task else ""
            owner = self._live_owner(con, out, own_task=task_id) if out else None
            if owner is not None:
                raise OutputInUse(out, owner.task_id, owner.status)
            if task is None or task.status not in RESUMABLE:
                return False
            state = json.dumps(merge_state(task.state, {"eta_seconds": 0}))
            cur = self._x(con,
                          f"UPDATE tasks SET status = ?, queued_at = ?, completed_at = '', error_message = '',"
                          f" worker_error = '', cancel_requested = 0, state = ?, resume_from = ?, message = ?"
                          f" WHERE task_id = ? AND status IN ({marks})",
                          (PENDING, now_iso(), state, resume_from, message, task_id, *sorted(RESUMABLE)))
            if cur.rowcount == 0:
                return False
            self._append_event(con, task_id, EVENT_STATUS, message)
        return True

    def interrupt_running(self, reason: str, replica_id: str | None = None) -> list[TaskRecord]:
        """On service start: every task still `running` belongs to a server that died. Mark
        them `interrupted` and return them as they were (with their worker pids). With
        `replica_id` (replicas sharing the store), only that replica's tasks and those whose
        lease ran out (or that have none): the others belong to live replicas."""
        found = self.with_status(RUNNING)
        if replica_id is not None:
            now = time.time()
            found = [t for t in found if t.replica_id == replica_id or t.lease_expires < now]  # 0: no lease
        for task in found:
            self.finish(task.task_id, INTERRUPTED, message=reason, error_message=reason,
                        attempt=task.attempt)
        return found


class TrainJobStore(SqlTaskStore):
    """Tasks and events in `<workspace>/jobs.db`. Safe to use from several threads (one
    connection per thread) and several processes (SQLite locking, WAL)."""

    _driver_error = sqlite3.Error

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_connections()
        try:
            con = self._conn()
            for statement in self.schema_statements():  # idempotent; each commits itself
                con.execute(statement)
            with self._write() as con:
                self._prepare_schema(con)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"storage.workspace: cannot open the job store {self.path}: {exc}") from exc

    def describe(self) -> str:
        return f"storage.workspace: {self.path}"

    def bind_workspace(self, workspace: Path) -> None:
        """Nothing to check: the SQLite store lives in the workspace it belongs to."""

    # -- connections ----------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        con = self._thread_conn()
        if con is not None:
            return con
        con = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        # FULL: a task acknowledged to a client survives a power cut, not only a crash.
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA busy_timeout=30000")
        return self._keep_conn(con)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        con = self._conn()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _existing_columns(self, con: sqlite3.Connection) -> set[str]:
        return {r["name"] for r in con.execute("PRAGMA table_info(tasks)").fetchall()}

    def journal_mode(self) -> str:
        return str(self._conn().execute("PRAGMA journal_mode").fetchone()[0])

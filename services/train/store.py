"""The job store: every training task and its progress events, in SQLite (WAL mode).

One file, `<workspace>/jobs.db`, shared by the server and its worker processes. A task row holds
the request, its state and its latest progress; the `events` table holds what WatchTraining
streams, numbered per task (1, 2, 3…) so a watcher can resume from the last number it saw.

Every change that matters is a conditional update inside one `BEGIN IMMEDIATE` transaction, so
two writers never undo each other: a worker writes only while its task is `running` under the
attempt number it was started with (a worker left over from an earlier run is fenced off), and
terminal states are never overwritten.

Plain Python, no grpc: the servicer, the scheduler and the worker all use it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from services.common.config import ConfigError

PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED = (
    "pending", "running", "completed", "failed", "cancelled", "interrupted")
# Paused (PauseTraining): the worker saved a checkpoint and exited; an end state that
# ResumeTraining continues, like cancelled and interrupted.
PAUSED = "paused"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED, PAUSED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, INTERRUPTED, PAUSED})
LIVE = frozenset({PENDING, RUNNING})
RESUMABLE = frozenset({FAILED, CANCELLED, INTERRUPTED, PAUSED})

EVENT_STATUS, EVENT_PROGRESS, EVENT_EVAL, EVENT_CHECKPOINT = "status", "progress", "eval", "checkpoint"
EVENT_KINDS = (EVENT_STATUS, EVENT_PROGRESS, EVENT_EVAL, EVENT_CHECKPOINT)

# Progress columns a worker may set, with their SQL types.
PROGRESS_FIELDS = {
    "progress": float, "current_step": int, "total_steps": int, "loss": float,
    "learning_rate": float, "epoch": float, "grad_norm": float, "tokens_per_second": float,
    "eta_seconds": float,
}

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    strategy TEXT NOT NULL,
    dataset_path TEXT NOT NULL,
    eval_dataset_path TEXT NOT NULL DEFAULT '',
    output_dir TEXT NOT NULL,
    config_json TEXT NOT NULL,
    resolved_json TEXT NOT NULL,
    created_at TEXT NOT NULL,
    queued_at TEXT NOT NULL,
    started_at TEXT NOT NULL DEFAULT '',
    completed_at TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    current_step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    loss REAL NOT NULL DEFAULT 0,
    learning_rate REAL NOT NULL DEFAULT 0,
    epoch REAL NOT NULL DEFAULT 0,
    grad_norm REAL NOT NULL DEFAULT 0,
    tokens_per_second REAL NOT NULL DEFAULT 0,
    eta_seconds REAL NOT NULL DEFAULT 0,
    metrics_json TEXT NOT NULL DEFAULT '{}',
    last_checkpoint TEXT NOT NULL DEFAULT '',
    resume_from TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER NOT NULL DEFAULT 0,
    worker_error TEXT NOT NULL DEFAULT '',
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, queued_at, seq);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    data_json TEXT NOT NULL,
    PRIMARY KEY (task_id, sequence)
) WITHOUT ROWID;
"""


def run_dir(workspace: Path, task_id: str) -> Path:
    """The task's own folder: checkpoints, worker.log, training_log.jsonl."""
    return Path(workspace) / "runs" / task_id


def now_iso() -> str:
    """UTC now as ISO-8601 with milliseconds, e.g. 2025-05-01T12:00:00.123Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class TaskRecord:
    """One task row. `config` is the TrainingConfig as a dict (proto field names, defaults
    filled); `resolved` the absolute paths the worker uses."""

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
    progress: float
    current_step: int
    total_steps: int
    loss: float
    learning_rate: float
    epoch: float
    grad_norm: float
    tokens_per_second: float
    eta_seconds: float
    metrics: dict[str, float]
    last_checkpoint: str
    resume_from: str
    cancel_requested: bool
    attempt: int
    worker_pid: int
    worker_error: str
    last_sequence: int

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def state(self) -> dict[str, Any]:
        """The progress fields, as stored in an event."""
        out = {name: getattr(self, name) for name in PROGRESS_FIELDS}
        out["metrics"] = dict(self.metrics)
        return out


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


def _task_from_row(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        seq=row["seq"], task_id=row["task_id"], status=row["status"], strategy=row["strategy"],
        dataset_path=row["dataset_path"], eval_dataset_path=row["eval_dataset_path"],
        output_dir=row["output_dir"], config=json.loads(row["config_json"]),
        resolved=json.loads(row["resolved_json"]), created_at=row["created_at"],
        queued_at=row["queued_at"], started_at=row["started_at"], completed_at=row["completed_at"],
        error_message=row["error_message"], message=row["message"], progress=row["progress"],
        current_step=row["current_step"], total_steps=row["total_steps"], loss=row["loss"],
        learning_rate=row["learning_rate"], epoch=row["epoch"], grad_norm=row["grad_norm"],
        tokens_per_second=row["tokens_per_second"], eta_seconds=row["eta_seconds"],
        metrics=json.loads(row["metrics_json"]), last_checkpoint=row["last_checkpoint"],
        resume_from=row["resume_from"], cancel_requested=bool(row["cancel_requested"]),
        attempt=row["attempt"], worker_pid=row["worker_pid"], worker_error=row["worker_error"],
        last_sequence=row["last_sequence"],
    )


class OutputInUse(Exception):
    """The output folder is (inside, or holds) the output folder of another live task."""

    def __init__(self, out: str, task_id: str, status: str):
        super().__init__(f"{out} is the output folder of task {task_id} ({status})")
        self.out, self.task_id, self.status = out, task_id, status


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _live_owner(con: sqlite3.Connection, out: str, own_task: str = "") -> TaskRecord | None:
    """The live task (other than `own_task`) whose resolved output folder overlaps `out`."""
    marks = ",".join("?" for _ in LIVE)
    rows = con.execute(f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY queued_at, seq",
                       sorted(LIVE)).fetchall()
    for task in map(_task_from_row, rows):
        other = task.resolved.get("output_dir", "")
        if task.task_id != own_task and other and _overlaps(Path(other), Path(out)):
            return task
    return None


class StoreError(ConfigError):
    """The job store file cannot be opened or has an unknown schema (start-up stops)."""


class TrainJobStore:
    """Tasks and events in `<workspace>/jobs.db`. Safe to use from several threads (one
    connection per thread) and several processes (SQLite locking, WAL)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self._conn().executescript(_SCHEMA)  # idempotent; each statement commits itself
            with self._write() as con:
                row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    con.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row["value"]) > SCHEMA_VERSION:
                    raise StoreError(f"storage.workspace: {self.path}: job store schema {row['value']} is newer than this "
                                     f"service understands ({SCHEMA_VERSION})")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"storage.workspace: cannot open the job store {self.path}: {exc}") from exc

    # -- connections ----------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            return con
        con = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA journal_mode=WAL")
        # FULL: a task acknowledged to a client survives a power cut, not only a crash.
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA busy_timeout=30000")
        self._local.con, self._local.pid = con, os.getpid()
        with self._lock:
            self._all.append(con)
        return con

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

    def close(self) -> None:
        with self._lock:
            for con in self._all:
                try:
                    con.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    def journal_mode(self) -> str:
        return str(self._conn().execute("PRAGMA journal_mode").fetchone()[0])

    # -- events ---------------------------------------------------------------------------
    def _append_event(self, con: sqlite3.Connection, task_id: str, kind: str, message: str = "",
                      extra: dict[str, Any] | None = None) -> int:
        """Add an event carrying the task's state as it is now in this transaction."""
        con.execute("UPDATE tasks SET last_sequence = last_sequence + 1 WHERE task_id = ?", (task_id,))
        row = con.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        task = _task_from_row(row)
        data = task.state()
        data["message"] = message
        if extra:
            data.update(extra)
        con.execute(
            "INSERT INTO events (task_id, sequence, kind, status, timestamp, data_json) VALUES (?, ?, ?, ?, ?, ?)",
            (task_id, task.last_sequence, kind, task.status, now_iso(), json.dumps(data, ensure_ascii=False)),
        )
        return task.last_sequence

    def events_after(self, task_id: str, after: int, limit: int = 500) -> list[EventRecord]:
        rows = self._conn().execute(
            "SELECT * FROM events WHERE task_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (task_id, after, limit),
        ).fetchall()
        return [EventRecord(r["task_id"], r["sequence"], r["kind"], r["status"], r["timestamp"],
                            json.loads(r["data_json"])) for r in rows]

    # -- reading tasks --------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRecord | None:
        row = self._conn().execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _task_from_row(row) if row else None

    def list_page(self, limit: int, before_seq: int | None = None) -> list[TaskRecord]:
        """Tasks newest first; `before_seq` continues after the last task of a previous page."""
        if before_seq is None:
            rows = self._conn().execute("SELECT * FROM tasks ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self._conn().execute("SELECT * FROM tasks WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                                        (before_seq, limit)).fetchall()
        return [_task_from_row(r) for r in rows]

    def with_status(self, *statuses: str) -> list[TaskRecord]:
        marks = ",".join("?" for _ in statuses)
        rows = self._conn().execute(
            f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY queued_at, seq", statuses).fetchall()
        return [_task_from_row(r) for r in rows]

    def queue(self) -> list[str]:
        """Ids of pending tasks in the order they will start."""
        rows = self._conn().execute(
            "SELECT task_id FROM tasks WHERE status = ? ORDER BY queued_at, seq", (PENDING,)).fetchall()
        return [r["task_id"] for r in rows]

    def status_counts(self) -> dict[str, int]:
        """Number of tasks in each state."""
        rows = self._conn().execute("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}

    def queue_position(self, task_id: str) -> int:
        """0 for the next task to start; -1 when the task is not pending."""
        order = self.queue()
        return order.index(task_id) if task_id in order else -1

    def output_dirs(self) -> list[str]:
        """Every resolved output folder a task wrote (or meant to write) into."""
        rows = self._conn().execute("SELECT resolved_json FROM tasks").fetchall()
        found = {json.loads(r["resolved_json"]).get("output_dir", "") for r in rows}
        return sorted(d for d in found if d)

    def live_owner(self, output_dir: str, own_task: str = "") -> TaskRecord | None:
        """The live task other than `own_task` that writes into (or around) `output_dir`."""
        return _live_owner(self._conn(), output_dir, own_task)

    def previous_tasks_for_output(self, output_dir: str) -> list[TaskRecord]:
        """Tasks that wrote (or meant to write) into this resolved output folder, newest first."""
        rows = self._conn().execute("SELECT * FROM tasks ORDER BY seq DESC").fetchall()
        return [t for t in map(_task_from_row, rows) if t.resolved.get("output_dir") == output_dir]

    # -- lifecycle --------------------------------------------------------------------------
    def create(self, *, task_id: str, strategy: str, dataset_path: str, eval_dataset_path: str,
               output_dir: str, config: dict[str, Any], resolved: dict[str, Any],
               message: str = "queued", resume_from: str = "") -> TaskRecord:
        """Store a new pending task and its first event. Returns the stored record. Raises
        OutputInUse, storing nothing, when a live task owns `resolved["output_dir"]`: the
        check and the insert are one transaction, so two concurrent starts cannot both pass."""
        stamp = now_iso()
        with self._write() as con:
            out = str(resolved.get("output_dir", ""))
            owner = _live_owner(con, out) if out else None
            if owner is not None:
                raise OutputInUse(out, owner.task_id, owner.status)
            con.execute(
                "INSERT INTO tasks (task_id, status, strategy, dataset_path, eval_dataset_path, output_dir,"
                " config_json, resolved_json, created_at, queued_at, message, resume_from)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, PENDING, strategy, dataset_path, eval_dataset_path, output_dir,
                 json.dumps(config, ensure_ascii=False), json.dumps(resolved, ensure_ascii=False),
                 stamp, stamp, message, resume_from),
            )
            self._append_event(con, task_id, EVENT_STATUS, message)
        record = self.get(task_id)
        assert record is not None
        return record

    def claim(self, task_id: str, message: str = "starting the worker") -> int | None:
        """pending -> running with a new attempt number (returned); None if not pending."""
        with self._write() as con:
            cur = con.execute(
                "UPDATE tasks SET status = ?, attempt = attempt + 1, started_at = ?, completed_at = '',"
                " cancel_requested = 0, worker_pid = 0, worker_error = '', error_message = '', message = ?"
                " WHERE task_id = ? AND status = ?",
                (RUNNING, now_iso(), message, task_id, PENDING),
            )
            if cur.rowcount == 0:
                return None
            self._append_event(con, task_id, EVENT_STATUS, message)
            return int(con.execute("SELECT attempt FROM tasks WHERE task_id = ?", (task_id,)).fetchone()[0])

    def set_worker_pid(self, task_id: str, attempt: int, pid: int) -> None:
        with self._write() as con:
            con.execute("UPDATE tasks SET worker_pid = ? WHERE task_id = ? AND attempt = ?", (pid, task_id, attempt))

    def report(self, task_id: str, attempt: int, kind: str, *, fields: dict[str, Any] | None = None,
               metrics: dict[str, float] | None = None, message: str | None = None,
               last_checkpoint: str | None = None, event: bool = True) -> bool:
        """A worker's progress: update the running task (merging `metrics`) and add an event.
        Returns False, writing nothing, when the task is no longer running under `attempt`."""
        sets, args = [], []
        for name, value in (fields or {}).items():
            if name not in PROGRESS_FIELDS:
                raise ValueError(f"unknown progress field {name!r}")
            sets.append(f"{name} = ?")
            args.append(PROGRESS_FIELDS[name](value))
        if message is not None:
            sets.append("message = ?")
            args.append(message)
        if last_checkpoint is not None:
            sets.append("last_checkpoint = ?")
            args.append(last_checkpoint)
        with self._write() as con:
            row = con.execute("SELECT metrics_json FROM tasks WHERE task_id = ? AND attempt = ? AND status = ?",
                              (task_id, attempt, RUNNING)).fetchone()
            if row is None:
                return False
            if metrics:
                merged = json.loads(row["metrics_json"])
                merged.update({k: float(v) for k, v in metrics.items()})
                sets.append("metrics_json = ?")
                args.append(json.dumps(merged))
            if sets:
                con.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE task_id = ?", (*args, task_id))
            if event:
                self._append_event(con, task_id, kind, message or "")
        return True

    def note_worker_error(self, task_id: str, attempt: int, text: str) -> None:
        """The worker's own account of why it is about to fail (the server adds stderr)."""
        with self._write() as con:
            con.execute("UPDATE tasks SET worker_error = ? WHERE task_id = ? AND attempt = ?",
                        (text[:4000], task_id, attempt))

    def finish(self, task_id: str, status: str, *, message: str, attempt: int | None = None,
               from_statuses: tuple[str, ...] = (RUNNING,), error_message: str | None = None,
               fields: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> bool:
        """Move a task to a terminal `status` if it is in `from_statuses` (and under `attempt`
        when given). Returns False, changing nothing, otherwise."""
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a terminal status")
        sets = ["status = ?", "completed_at = ?", "message = ?", "eta_seconds = 0"]
        args: list[Any] = [status, now_iso(), message]
        if error_message is not None:
            sets.append("error_message = ?")
            args.append(error_message)
        for name, value in (fields or {}).items():
            if name not in PROGRESS_FIELDS:
                raise ValueError(f"unknown progress field {name!r}")
            sets.append(f"{name} = ?")
            args.append(PROGRESS_FIELDS[name](value))
        where = f"task_id = ? AND status IN ({','.join('?' for _ in from_statuses)})"
        wargs: list[Any] = [task_id, *from_statuses]
        if attempt is not None:
            where += " AND attempt = ?"
            wargs.append(attempt)
        with self._write() as con:
            if metrics:
                row = con.execute(f"SELECT metrics_json FROM tasks WHERE {where}", wargs).fetchone()
                if row is None:
                    return False
                merged = json.loads(row["metrics_json"])
                merged.update({k: float(v) for k, v in metrics.items()})
                sets.append("metrics_json = ?")
                args.append(json.dumps(merged))
            cur = con.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE {where}", (*args, *wargs))
            if cur.rowcount == 0:
                return False
            self._append_event(con, task_id, EVENT_STATUS, message)
        return True

    def request_cancel(self, task_id: str) -> str:
        """Cancel a task. Returns what happened: "cancelled" (it was pending and is now
        cancelled), "signalled" (it is running; the flag is set for its worker), or "ended"
        (it had already ended), "unknown" (no such task)."""
        with self._write() as con:
            row = con.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                return "unknown"
            if row["status"] == PENDING:
                con.execute("UPDATE tasks SET status = ?, completed_at = ?, message = ? WHERE task_id = ?",
                            (CANCELLED, now_iso(), "cancelled before it started", task_id))
                self._append_event(con, task_id, EVENT_STATUS, "cancelled before it started")
                return "cancelled"
            if row["status"] == RUNNING:
                con.execute("UPDATE tasks SET cancel_requested = 1, message = ? WHERE task_id = ?",
                            ("cancelling: the worker stops at its next step and saves a checkpoint", task_id))
                self._append_event(con, task_id, EVENT_STATUS, "cancel requested")
                return "signalled"
            return "ended"

    def worker_view(self, task_id: str) -> tuple[str, int, bool]:
        """(status, attempt, cancel_requested), cheap enough to read at every step."""
        row = self._conn().execute("SELECT status, attempt, cancel_requested FROM tasks WHERE task_id = ?",
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
            row = con.execute("SELECT resolved_json FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            out = str(json.loads(row["resolved_json"]).get("output_dir", "")) if row else ""
            owner = _live_owner(con, out, own_task=task_id) if out else None
            if owner is not None:
                raise OutputInUse(out, owner.task_id, owner.status)
            cur = con.execute(
                f"UPDATE tasks SET status = ?, queued_at = ?, completed_at = '', error_message = '',"
                f" worker_error = '', cancel_requested = 0, eta_seconds = 0, resume_from = ?, message = ?"
                f" WHERE task_id = ? AND status IN ({marks})",
                (PENDING, now_iso(), resume_from, message, task_id, *sorted(RESUMABLE)),
            )
            if cur.rowcount == 0:
                return False
            self._append_event(con, task_id, EVENT_STATUS, message)
        return True

    def interrupt_running(self, reason: str) -> list[TaskRecord]:
        """On service start: every task still `running` belongs to a server that died. Mark
        them `interrupted` and return them as they were (with their worker pids)."""
        found = self.with_status(RUNNING)
        for task in found:
            self.finish(task.task_id, INTERRUPTED, message=reason, error_message=reason,
                        attempt=task.attempt)
        return found

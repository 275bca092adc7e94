"""Unit tests of the job store: persistence, per-task event numbering, guarded transitions,
fencing of stale workers, and concurrent writers in other processes. Each runs against both
backends: SQLite (`<workspace>/jobs.db`) and a real PostgreSQL server (tests/pg.py)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from services.train.store import (CANCELLED, COMPLETED, FAILED, INTERRUPTED, PENDING, RUNNING,
                                  TaskStore, TrainJobStore)


def open_at(where: str) -> TaskStore:
    """The store at `where`: a postgresql:// URL, or the path of a jobs.db."""
    if where.startswith("postgresql://"):
        from services.train.store_pg import PgTaskStore

        return PgTaskStore(where)
    return TrainJobStore(where)


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path) -> str:
    """Where a test's job store lives, once per backend."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return request.getfixturevalue("postgres").new_database_url()


def make_task(store: TaskStore, task_id: str, output: str | None = None) -> None:
    # Each task its own folder: the store refuses two live tasks writing into one.
    output = output or f"/tmp/out-{task_id}"
    store.create(task_id=task_id, strategy="trl", dataset_path="d.jsonl", eval_dataset_path="",
                 output_dir="out", config={"learning_rate": 0.001, "lora_config": {"r": 8}},
                 resolved={"output_dir": output, "dataset": "/d.jsonl", "model": "/m", "eval_dataset": "",
                           "resume_from": ""})


def test_wal_mode_and_survives_reopen(where):
    path = where
    store = open_at(path)
    if isinstance(store, TrainJobStore):
        assert store.journal_mode().lower() == "wal"
    make_task(store, "a")
    make_task(store, "b")
    attempt = store.claim("a")
    assert store.report("a", attempt, "progress", fields={"current_step": 3, "total_steps": 10, "loss": 1.5},
                        metrics={"tokens_per_second": 12.5}, message="step 3")
    store.close()

    reopened = open_at(path)
    a, b = reopened.get("a"), reopened.get("b")
    assert (a.status, a.current_step, a.total_steps, a.loss) == (RUNNING, 3, 10, 1.5)
    assert a.metrics == {"tokens_per_second": 12.5}
    assert a.config == {"learning_rate": 0.001, "lora_config": {"r": 8}}
    assert b.status == PENDING and reopened.queue() == ["b"]
    assert [t.task_id for t in reopened.list_page(10)] == ["b", "a"]  # newest first
    assert [e.sequence for e in reopened.events_after("a", 0)] == [1, 2, 3]


def test_events_are_numbered_per_task_and_carry_the_state(where):
    store = open_at(where)
    make_task(store, "a")
    make_task(store, "b")
    attempt = store.claim("a")
    for step in (1, 2):
        store.report("a", attempt, "progress", fields={"current_step": step, "loss": 3.0 - step})
    store.finish("a", COMPLETED, attempt=attempt, message="done", fields={"progress": 100})
    events = store.events_after("a", 0)
    assert [(e.sequence, e.kind, e.status) for e in events] == [
        (1, "status", PENDING), (2, "status", RUNNING), (3, "progress", RUNNING), (4, "progress", RUNNING),
        (5, "status", COMPLETED)]
    assert events[3].data["current_step"] == 2 and events[3].data["loss"] == 1.0
    assert events[4].data["progress"] == 100 and events[4].message == "done"
    assert [e.sequence for e in store.events_after("a", 3)] == [4, 5]
    assert [e.sequence for e in store.events_after("b", 0)] == [1]  # b has its own numbering


def test_terminal_states_are_never_overwritten(where):
    store = open_at(where)
    make_task(store, "a")
    attempt = store.claim("a")
    assert store.finish("a", FAILED, attempt=attempt, message="boom", error_message="boom")
    assert not store.finish("a", COMPLETED, attempt=attempt, message="late")
    assert not store.report("a", attempt, "progress", fields={"current_step": 9})
    assert store.get("a").status == FAILED and store.get("a").current_step == 0
    assert store.request_cancel("a") == "ended"
    assert store.request_cancel("nope") == "unknown"


def test_a_stale_worker_is_fenced_off_by_its_attempt(where):
    store = open_at(where)
    make_task(store, "a")
    first = store.claim("a")
    store.interrupt_running("service restarted")
    assert store.requeue("a", resume_from="/ckpt", message="again")
    second = store.claim("a")
    assert second == first + 1
    # The first attempt's worker is still alive somewhere: none of its writes land.
    assert not store.report("a", first, "progress", fields={"current_step": 5})
    assert not store.finish("a", COMPLETED, attempt=first, message="stale")
    assert store.worker_view("a") == (RUNNING, second, False)
    assert store.report("a", second, "progress", fields={"current_step": 1})
    assert store.get("a").current_step == 1 and store.get("a").resume_from == "/ckpt"


def test_cancel_pending_and_running_and_requeue(where):
    store = open_at(where)
    make_task(store, "p")
    make_task(store, "r")
    make_task(store, "q")
    assert store.queue_position("q") == 2
    assert store.request_cancel("p") == "cancelled"
    assert store.get("p").status == CANCELLED and store.queue_position("q") == 1
    attempt = store.claim("r")
    assert store.request_cancel("r") == "signalled"
    assert store.worker_view("r") == (RUNNING, attempt, True)
    assert not store.requeue("r", resume_from="", message="x")  # still running
    assert store.finish("r", CANCELLED, attempt=attempt, message="cancelled at step 2")
    assert store.requeue("r", resume_from="/c", message="again")
    r = store.get("r")
    assert r.status == PENDING and not r.cancel_requested and r.completed_at == ""
    assert store.queue() == ["q", "r"]  # a requeued task goes to the back


def test_interrupt_running_marks_only_running_tasks(where):
    store = open_at(where)
    for name in ("run", "wait", "done"):
        make_task(store, name)
    store.claim("run")
    attempt = store.claim("done")
    store.finish("done", COMPLETED, attempt=attempt, message="ok")
    found = store.interrupt_running("service restarted while running")
    assert [t.task_id for t in found] == ["run"]
    assert store.get("run").status == INTERRUPTED
    assert "service restarted" in store.get("run").error_message
    assert store.get("wait").status == PENDING and store.get("done").status == COMPLETED


def _writer(path, task_id, attempt, count):
    store = open_at(path)
    for i in range(count):
        assert store.report(task_id, attempt, "progress", fields={"current_step": i})


def test_concurrent_writers_in_other_processes_get_distinct_sequences(where):
    path = where
    store = open_at(path)
    make_task(store, "a")
    attempt = store.claim("a")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, "a", attempt, 40)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    sequences = [e.sequence for e in store.events_after("a", 0, limit=1000)]
    assert sequences == list(range(1, 2 + 120 + 1))
    assert store.get("a").last_sequence == 122


def test_recover_kills_a_leftover_worker_and_keeps_the_queue(tmp_path, tiny_model_dir, where):
    from services.train.scheduler import Scheduler
    from tests.support import make_config

    config = make_config(tmp_path / "ws", tiny_model_dir)
    store = open_at(where)
    make_task(store, "orphaned")
    make_task(store, "queued")
    attempt = store.claim("orphaned")
    # A process that looks like this task's worker (its command line names the module and task).
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                                 "services.train.worker", "orphaned"], start_new_session=True)
    try:
        store.set_worker_pid("orphaned", attempt, leftover.pid)
        marked = Scheduler(store, config).recover()
        assert marked == ["orphaned"]
        assert leftover.wait(10) == -signal.SIGKILL
    finally:
        if leftover.poll() is None:
            os.killpg(leftover.pid, signal.SIGKILL)
    assert store.get("orphaned").status == INTERRUPTED
    assert store.get("queued").status == PENDING


def test_an_unrelated_process_with_a_recorded_pid_is_left_alone(tmp_path, tiny_model_dir, where):
    from services.train.scheduler import Scheduler
    from tests.support import make_config

    config = make_config(tmp_path / "ws", tiny_model_dir)
    store = open_at(where)
    make_task(store, "t")
    attempt = store.claim("t")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        store.set_worker_pid("t", attempt, other.pid)
        Scheduler(store, config).recover()
        time.sleep(0.3)
        assert other.poll() is None
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait(10)


@pytest.mark.parametrize("status", [COMPLETED, "bogus"])
def test_finish_rejects_non_terminal_targets(where, status):
    store = open_at(where)
    make_task(store, "a")
    if status == "bogus":
        with pytest.raises(ValueError):
            store.finish("a", status, message="x")
    else:
        assert not store.finish("a", status, message="x")  # pending is not in from_statuses


def test_recover_removes_half_saved_outputs(tmp_path, tiny_model_dir, where):
    from services.train.scheduler import Scheduler
    from tests.support import make_config

    config = make_config(tmp_path / "ws", tiny_model_dir)
    store = open_at(where)
    out = tmp_path / "models" / "x"
    make_task(store, "killed", output=str(out))
    store.claim("killed")
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    half = out.parent / ".x.k3j2.tmp"  # a kill -9 while the output was being saved
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 1024)
    old = out.parent / ".x.9a8b.old"
    old.mkdir()
    other = out.parent / ".y.k3j2.tmp"  # another folder's: not ours to touch
    other.mkdir()
    Scheduler(store, config).recover()
    assert not half.exists() and not old.exists()
    assert other.exists() and (out / "config.json").is_file()


# Schema 1 as it shipped (one column per progress number, *_json columns): a jobs.db written by
# an older service must open, migrated, with nothing lost.
_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    strategy TEXT NOT NULL, dataset_path TEXT NOT NULL, eval_dataset_path TEXT NOT NULL DEFAULT '',
    output_dir TEXT NOT NULL, config_json TEXT NOT NULL, resolved_json TEXT NOT NULL,
    created_at TEXT NOT NULL, queued_at TEXT NOT NULL, started_at TEXT NOT NULL DEFAULT '',
    completed_at TEXT NOT NULL DEFAULT '', error_message TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '', progress REAL NOT NULL DEFAULT 0,
    current_step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0,
    loss REAL NOT NULL DEFAULT 0, learning_rate REAL NOT NULL DEFAULT 0, epoch REAL NOT NULL DEFAULT 0,
    grad_norm REAL NOT NULL DEFAULT 0, tokens_per_second REAL NOT NULL DEFAULT 0,
    eta_seconds REAL NOT NULL DEFAULT 0, metrics_json TEXT NOT NULL DEFAULT '{}',
    last_checkpoint TEXT NOT NULL DEFAULT '', resume_from TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0, attempt INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER NOT NULL DEFAULT 0, worker_error TEXT NOT NULL DEFAULT '',
    last_sequence INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_status ON tasks (status, queued_at, seq);
CREATE TABLE events (task_id TEXT NOT NULL, sequence INTEGER NOT NULL, kind TEXT NOT NULL,
    status TEXT NOT NULL, timestamp TEXT NOT NULL, data_json TEXT NOT NULL,
    PRIMARY KEY (task_id, sequence)) WITHOUT ROWID;
INSERT INTO tasks (task_id, status, strategy, dataset_path, output_dir, config_json, resolved_json,
    created_at, queued_at, completed_at, message, progress, current_step, total_steps, loss,
    learning_rate, epoch, metrics_json, last_checkpoint, attempt, last_sequence)
VALUES ('old', 'completed', 'lora', 'd.jsonl', 'out', '{"learning_rate": 0.001}',
    '{"output_dir": "/tmp/out-old"}', '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z',
    '2025-01-01T00:05:00.000Z', 'done', 100, 12, 12, 0.75, 0.0002, 3.0, '{"train_runtime": 9.5}',
    '/ck/checkpoint-12', 1, 2);
INSERT INTO tasks (task_id, status, strategy, dataset_path, output_dir, config_json, resolved_json,
    created_at, queued_at, last_sequence)
VALUES ('waiting', 'pending', 'trl', 'd.jsonl', 'out2', '{}', '{"output_dir": "/tmp/out-waiting"}',
    '2025-01-02T00:00:00.000Z', '2025-01-02T00:00:00.000Z', 1);
INSERT INTO events VALUES ('old', 1, 'status', 'pending', '2025-01-01T00:00:00.000Z', '{"message": "queued"}');
INSERT INTO events VALUES ('old', 2, 'status', 'completed', '2025-01-01T00:05:00.000Z', '{"message": "done"}');
INSERT INTO events VALUES ('waiting', 1, 'status', 'pending', '2025-01-02T00:00:00.000Z', '{"message": "queued"}');
"""


def test_a_schema_1_job_store_is_migrated_without_loss(tmp_path):
    import sqlite3

    from services.train.store import SCHEMA_VERSION

    path = tmp_path / "jobs.db"
    con = sqlite3.connect(path)
    con.executescript(_SCHEMA_V1)
    con.close()
    store = TrainJobStore(path)
    old = store.get("old")
    assert (old.status, old.strategy, old.current_step, old.total_steps, old.loss, old.progress, old.epoch) == (
        COMPLETED, "lora", 12, 12, 0.75, 100.0, 3.0)
    assert old.metrics == {"train_runtime": 9.5} and old.config == {"learning_rate": 0.001}
    assert old.last_checkpoint == "/ck/checkpoint-12" and old.attempt == 1 and old.message == "done"
    assert [e.sequence for e in store.events_after("old", 0)] == [1, 2]
    assert store.queue() == ["waiting"] and [t.task_id for t in store.list_page(10)] == ["waiting", "old"]
    # The migrated store works on: numbering continues, a new task comes after the old ones.
    attempt = store.claim("waiting")
    assert store.report("waiting", attempt, "progress", fields={"current_step": 1}, metrics={"rewards/chosen": 0.5})
    assert [e.sequence for e in store.events_after("waiting", 0)] == [1, 2, 3]
    make_task(store, "new")
    assert store.get("new").seq > store.get("waiting").seq
    store.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    columns = {r[1] for r in con.execute("PRAGMA table_info(tasks)")}
    assert "state" in columns and "loss" not in columns and "metrics_json" not in columns
    con.close()


def test_a_newer_schema_is_refused_naming_the_file(tmp_path):
    import sqlite3

    from services.train.store import StoreError

    path = tmp_path / "jobs.db"
    TrainJobStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="jobs.db.*schema 99 is newer"):
        TrainJobStore(path)


def test_progress_is_declared_once_by_the_proto(where):
    """The progress numbers are TrainingEvent's; a metric of any name needs no declaration;
    task_to_proto and event_to_proto carry every one of them."""
    from services.train.server import event_to_proto, task_to_proto
    from services.train.store import PROGRESS_FIELDS, TASK_COLUMNS
    from wintrain.train.v1 import train_pb2

    assert set(PROGRESS_FIELDS) == {"progress", "current_step", "total_steps", "loss", "learning_rate", "epoch",
                                    "grad_norm", "tokens_per_second", "eta_seconds"}
    assert not set(PROGRESS_FIELDS) & set(TASK_COLUMNS)  # one JSON column, `state`, holds them
    store = open_at(where)
    make_task(store, "a")
    attempt = store.claim("a")
    values = {name: (7 if kind is int else 0.5 + i) for i, (name, kind) in enumerate(PROGRESS_FIELDS.items())}
    store.report("a", attempt, "eval", fields=values, metrics={"rewards/margins": 1.25}, message="m")
    with pytest.raises(ValueError, match="unknown progress field 'bogus'"):
        store.report("a", attempt, "progress", fields={"bogus": 1})
    task = task_to_proto(store.get("a"), 0)
    event = event_to_proto(store.events_after("a", 0)[-1])
    snapshot = event_to_proto(store.get("a"))
    for message in (task, event, snapshot):
        assert {name: getattr(message, name) for name in PROGRESS_FIELDS} == values
        assert dict(message.metrics) == {"rewards/margins": 1.25}
        assert message.status == train_pb2.TASK_STATUS_RUNNING
    assert task.strategy == train_pb2.STRATEGY_TRL and task.config.learning_rate == 0.001
    assert task.config.lora_config.r == 8 and task.output_dir == "out"
    assert event.kind == train_pb2.EVENT_KIND_EVAL and event.sequence == 3 and event.message == "m"
    assert snapshot.kind == train_pb2.EVENT_KIND_SNAPSHOT and snapshot.sequence == 0


def test_every_status_word_is_the_protos(tmp_path):
    from services.train.server import task_to_proto
    from services.train.store import STATUS_WORDS, STATUSES
    from wintrain.api.v1 import options_pb2
    from wintrain.train.v1 import train_pb2

    assert set(STATUSES) == {v.GetOptions().Extensions[options_pb2.json_name]
                             for v in train_pb2.TaskStatus.DESCRIPTOR.values if v.number}
    store = TrainJobStore(tmp_path / "jobs.db")
    make_task(store, "a")
    for number, word in STATUS_WORDS.items():
        record = store.get("a")
        record.status = word
        assert task_to_proto(record).status == number


def test_leases_claim_each_task_once_and_expire_to_interrupted(where):
    import time as _time

    one, two = open_at(where), open_at(where)  # two replicas' connections
    for name in ("t1", "t2", "t3"):
        make_task(one, name)
    assert one.claim_next("replica-a", 30) == ("t1", 1)
    assert two.claim_next("replica-b", 0.5) == ("t2", 1)
    assert one.claim_next("replica-a", 30) == ("t3", 1)
    assert two.claim_next("replica-b", 30) is None  # nothing left: never a task twice
    assert (one.get("t1").replica_id, one.get("t2").replica_id) == ("replica-a", "replica-b")
    # replica-a beats, replica-b does not: only t2's lease runs out.
    _time.sleep(0.7)
    assert one.renew_leases("replica-a", 30) == 2
    expired = one.expire_leases("lease ran out")
    assert [t.task_id for t in expired] == ["t2"]
    assert one.get("t2").status == INTERRUPTED and "lease ran out" in one.get("t2").error_message
    assert not two.report("t2", 1, "progress", fields={"current_step": 3})  # the dead replica's worker: fenced
    assert one.get("t1").status == RUNNING and one.expire_leases("x") == []
    # A replica restarting marks only its own tasks (and expired ones), not a live replica's.
    assert [t.task_id for t in two.interrupt_running("restart", replica_id="replica-b")] == []
    assert sorted(t.task_id for t in two.interrupt_running("restart", replica_id="replica-a")) == ["t1", "t3"]


def test_a_replica_with_another_workspace_is_refused(where, tmp_path):
    from services.train.store import WORKSPACE_MARKER, StoreError

    store = open_at(where)
    shared, other = tmp_path / "shared", tmp_path / "other"
    store.bind_workspace(shared)
    if not store.shared:  # SQLite: the store lives in its workspace, nothing to compare
        assert not (shared / WORKSPACE_MARKER).exists()
        return
    assert (shared / WORKSPACE_MARKER).is_file()
    open_at(where).bind_workspace(shared)  # a second replica on the same volume joins
    with pytest.raises(StoreError, match=r"storage.workspace: .*other is not the shared workspace.*is missing"):
        open_at(where).bind_workspace(other)
    other.mkdir()
    (other / WORKSPACE_MARKER).write_text("something-else\n")
    with pytest.raises(StoreError, match="holds 'something-else'"):
        open_at(where).bind_workspace(other)

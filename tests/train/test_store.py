"""Unit tests of the job store: persistence, per-task event numbering, guarded transitions,
fencing of stale workers, and concurrent writers in other processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from services.train.store import (CANCELLED, COMPLETED, FAILED, INTERRUPTED, PENDING, RUNNING,
                                  TrainJobStore)


def make_task(store: TrainJobStore, task_id: str, output: str | None = None) -> None:
    # Each task its own folder: the store refuses two live tasks writing into one.
    output = output or f"/tmp/out-{task_id}"
    store.create(task_id=task_id, strategy="trl", dataset_path="d.jsonl", eval_dataset_path="",
                 output_dir="out", config={"learning_rate": 0.001, "lora_config": {"r": 8}},
                 resolved={"output_dir": output, "dataset": "/d.jsonl", "model": "/m", "eval_dataset": "",
                           "resume_from": ""})


def test_wal_mode_and_survives_reopen(tmp_path):
    path = tmp_path / "jobs.db"
    store = TrainJobStore(path)
    assert store.journal_mode().lower() == "wal"
    make_task(store, "a")
    make_task(store, "b")
    attempt = store.claim("a")
    assert store.report("a", attempt, "progress", fields={"current_step": 3, "total_steps": 10, "loss": 1.5},
                        metrics={"tokens_per_second": 12.5}, message="step 3")
    store.close()

    reopened = TrainJobStore(path)
    a, b = reopened.get("a"), reopened.get("b")
    assert (a.status, a.current_step, a.total_steps, a.loss) == (RUNNING, 3, 10, 1.5)
    assert a.metrics == {"tokens_per_second": 12.5}
    assert a.config == {"learning_rate": 0.001, "lora_config": {"r": 8}}
    assert b.status == PENDING and reopened.queue() == ["b"]
    assert [t.task_id for t in reopened.list_page(10)] == ["b", "a"]  # newest first
    assert [e.sequence for e in reopened.events_after("a", 0)] == [1, 2, 3]


def test_events_are_numbered_per_task_and_carry_the_state(tmp_path):
    store = TrainJobStore(tmp_path / "jobs.db")
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


def test_terminal_states_are_never_overwritten(tmp_path):
    store = TrainJobStore(tmp_path / "jobs.db")
    make_task(store, "a")
    attempt = store.claim("a")
    assert store.finish("a", FAILED, attempt=attempt, message="boom", error_message="boom")
    assert not store.finish("a", COMPLETED, attempt=attempt, message="late")
    assert not store.report("a", attempt, "progress", fields={"current_step": 9})
    assert store.get("a").status == FAILED and store.get("a").current_step == 0
    assert store.request_cancel("a") == "ended"
    assert store.request_cancel("nope") == "unknown"


def test_a_stale_worker_is_fenced_off_by_its_attempt(tmp_path):
    store = TrainJobStore(tmp_path / "jobs.db")
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


def test_cancel_pending_and_running_and_requeue(tmp_path):
    store = TrainJobStore(tmp_path / "jobs.db")
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


def test_interrupt_running_marks_only_running_tasks(tmp_path):
    store = TrainJobStore(tmp_path / "jobs.db")
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
    store = TrainJobStore(path)
    for i in range(count):
        assert store.report(task_id, attempt, "progress", fields={"current_step": i})


def test_concurrent_writers_in_other_processes_get_distinct_sequences(tmp_path):
    path = tmp_path / "jobs.db"
    store = TrainJobStore(path)
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


def test_recover_kills_a_leftover_worker_and_keeps_the_queue(tmp_path, tiny_model_dir):
    from services.train.scheduler import Scheduler
    from tests.support import make_config

    config = make_config(tmp_path / "ws", tiny_model_dir)
    store = TrainJobStore(config.workspace / "jobs.db")
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


def test_an_unrelated_process_with_a_recorded_pid_is_left_alone(tmp_path, tiny_model_dir):
    from services.train.scheduler import Scheduler
    from tests.support import make_config

    config = make_config(tmp_path / "ws", tiny_model_dir)
    store = TrainJobStore(config.workspace / "jobs.db")
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
def test_finish_rejects_non_terminal_targets(tmp_path, status):
    store = TrainJobStore(tmp_path / "jobs.db")
    make_task(store, "a")
    if status == "bogus":
        with pytest.raises(ValueError):
            store.finish("a", status, message="x")
    else:
        assert not store.finish("a", status, message="x")  # pending is not in from_statuses


def test_recover_removes_half_saved_outputs(tmp_path, tiny_model_dir):
    from services.train.scheduler import Scheduler
    from tests.support import make_config

    config = make_config(tmp_path / "ws", tiny_model_dir)
    store = TrainJobStore(config.workspace / "jobs.db")
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

"""Two real train services (`python -m services.train`) on one PostgreSQL job store and one
shared workspace form one pool (issue 20): 6 queued tasks, train.max_concurrent 1 each; both
replicas work; one is killed with -9 mid-run; every task ends, none ran twice at once (the
attempts in the event log prove it), and the task train.auto_resume moved to the other
replica ends with the final loss of an uninterrupted run of the same settings (within 1e-4).
A cancel sent to one replica stops the worker of the other."""

from __future__ import annotations

import contextlib
import signal
import time

import grpc
import pytest

from tests.support import PYTHON, free_port, service_env, start_process, wait_for_health
from tests.train.conftest import get, start, wait_for, wait_terminal
from wintrain.train.v1 import train_pb2, train_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RUN = dict(max_steps=10, save_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
           logging_steps=1, max_length=128, warmup_steps=0, learning_rate=1e-3, seed=11)


def _replica(name, url, workspace, tiny_model_dir, tmp_path):
    port = free_port()
    env = service_env({
        "storage.workspace": str(workspace), "storage.allowed_roots": [str(workspace)],
        "storage.job_store": url, "model.base_model_path": str(tiny_model_dir),
        "services.train.port": port, "services.train.metrics_port": None,
        "train.replica_id": name, "train.max_concurrent": 1, "train.auto_resume": True,
        "train.lease_seconds": 6, "train.worker_threads": 1, "train.cancel_grace_seconds": 20,
        "train.watch_poll_seconds": 0.1, "server.grace_seconds": 2, "logging.level": "WARNING",
    })
    proc = start_process([PYTHON, "-m", "services.train"], env, tmp_path / f"replica-{name}.log")
    wait_for_health(f"127.0.0.1:{port}", timeout=120)
    return proc, grpc.insecure_channel(f"127.0.0.1:{port}")


def _claims(store, task_id):
    """(replica, attempt number) of every start of the task, and whether each attempt ended
    before the next began."""
    events = store.events_after(task_id, 0, limit=10_000)
    claims, ended_before_next = [], True
    open_attempt = False
    for e in events:
        if e.kind == "status" and e.status == "running" and e.message.startswith("starting the worker on replica"):
            if open_attempt:
                ended_before_next = False
            claims.append(e.message.rsplit(" ", 1)[-1])
            open_attempt = True
        elif e.kind == "status" and e.status in ("completed", "failed", "cancelled", "interrupted", "paused"):
            open_attempt = False
    return claims, ended_before_next


@contextlib.contextmanager
def _two_replicas(url, workspace, tiny_model_dir, tmp_path):
    """Replicas "a" and "b" of the train service on one job store; yields (process a, stub a, stub b).
    On the way out, each replica still running gets SIGTERM, and is killed if not gone in 60 s."""
    a, chan_a = _replica("a", url, workspace, tiny_model_dir, tmp_path)
    b = None
    try:
        b, chan_b = _replica("b", url, workspace, tiny_model_dir, tmp_path)
        yield a, train_pb2_grpc.TrainServiceStub(chan_a), train_pb2_grpc.TrainServiceStub(chan_b)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except Exception:  # noqa: BLE001
                    proc.kill()


def test_two_replicas_share_the_queue_and_survive_a_kill(workspace, tiny_model_dir, datasets_dir, postgres,
                                                         tmp_path):
    from services.train.store_pg import PgTaskStore

    url = postgres.new_database_url()
    with _two_replicas(url, workspace, tiny_model_dir, tmp_path) as (a, stub_a, stub_b):
        ids = [start(stub_a if i % 2 else stub_b, output=f"out/t{i}", **RUN).task_id for i in range(6)]
        store = PgTaskStore(url)

        def running_on(name):
            return [t for t in store.with_status("running") if t.replica_id == name]

        # 1. both replicas work: each runs one task (max_concurrent 1 each).
        deadline = time.monotonic() + 180
        while not (running_on("a") and running_on("b")):
            assert time.monotonic() < deadline, [(t.task_id, t.status, t.replica_id) for t in store.list_page(10)]
            time.sleep(0.3)
        assert len(running_on("a")) == 1 and len(running_on("b")) == 1
        # Every replica answers for every task.
        assert {get(stub_b, i).task_id for i in ids} == set(ids) and get(stub_a, ids[0]).task_id == ids[0]

        # 2. kill -9 replica a once its task has a checkpoint.
        victim = running_on("a")[0].task_id
        wait_for(stub_b, victim, lambda t: t.last_checkpoint != "" and t.current_step >= 3, timeout=240,
                 what="a checkpoint of the task on replica a")
        a.send_signal(signal.SIGKILL)
        a.wait(10)

        # 3. every task ends, on replica b.
        finals = {i: wait_terminal(stub_b, i, timeout=600) for i in ids}
        assert {t.status for t in finals.values()} == {train_pb2.TASK_STATUS_COMPLETED}, finals
        for task_id in ids:
            claims, sequential = _claims(store, task_id)
            assert sequential, f"{task_id} ran twice at once: {claims}"
            assert len(claims) == store.get(task_id).attempt
        claims, _ = _claims(store, victim)
        assert claims == ["a", "b"], claims  # interrupted on a, resumed by b
        assert store.get(victim).attempt == 2
        others = [finals[i].loss for i in ids if i != victim]
        assert max(others) - min(others) < 1e-4  # same settings, same data: the same run
        assert abs(finals[victim].loss - others[0]) < 1e-4, (finals[victim].loss, others)
        assert finals[victim].current_step == RUN["max_steps"]
        store.close()


def test_a_cancel_sent_to_one_replica_stops_the_worker_of_the_other(workspace, tiny_model_dir, datasets_dir,
                                                                    postgres, tmp_path):
    from services.train.store_pg import PgTaskStore

    url = postgres.new_database_url()
    with _two_replicas(url, workspace, tiny_model_dir, tmp_path) as (a, stub_a, stub_b):
        long = {**RUN, "max_steps": 2000, "save_steps": 0}
        task_id = start(stub_a, output="out/long", **long).task_id
        wait_for(stub_a, task_id, lambda t: t.current_step >= 1, timeout=240, what="training")
        store = PgTaskStore(url)
        owner = store.get(task_id).replica_id
        other = stub_b if owner == "a" else stub_a
        other.CancelTraining(train_pb2.CancelTrainingRequest(task_id=task_id), timeout=10)
        final = wait_terminal(other, task_id, timeout=120)
        assert final.status == train_pb2.TASK_STATUS_CANCELLED, final
        assert final.current_step < 2000
        store.close()

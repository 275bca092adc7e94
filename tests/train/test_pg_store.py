"""The train service on a PostgreSQL job store (`storage.job_store: postgresql://…`), against a
real server (tests/pg.py): a task trains end to end with its worker writing into PostgreSQL and
WatchTraining streaming every event; a watcher is woken by LISTEN/NOTIFY, not by its polling
bound; an unreachable database stops start-up with one line naming the setting and the host."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import pytest

from services.train.server import register
from tests.support import PYTHON, InProcessServer, free_port, make_config, service_env
from tests.train.conftest import train_overrides, wait_terminal, watch
from wintrain.train.v1 import train_pb2, train_pb2_grpc

SMALL = dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1, max_length=128,
             warmup_steps=0, learning_rate=1e-3)


def test_a_task_trains_and_is_watched_on_postgresql(workspace, tiny_model_dir, datasets_dir, postgres):
    url = postgres.new_database_url()
    config = make_config(workspace, tiny_model_dir, **train_overrides(**{"storage.job_store": url}))
    with InProcessServer(config, "train", register) as server:
        stub = train_pb2_grpc.TrainServiceStub(server.channel())
        from tests.train.conftest import start

        resp = start(stub, output="out/pg", max_steps=4, save_steps=2, **SMALL)
        events = watch(stub, resp.task_id, timeout=240)
        task = wait_terminal(stub, resp.task_id)
        assert task.status == train_pb2.TASK_STATUS_COMPLETED, task
        assert task.current_step == 4 and task.loss > 0 and task.last_checkpoint
        assert events[0].kind == train_pb2.EVENT_KIND_SNAPSHOT
        stored = [e.sequence for e in events[1:]]
        assert stored == list(range(stored[0], stored[0] + len(stored)))  # no gap, no repeat
        assert events[-1].status == train_pb2.TASK_STATUS_COMPLETED
        assert [e.current_step for e in events if e.kind == train_pb2.EVENT_KIND_PROGRESS] == [1, 2, 3, 4]
        replay = watch(stub, resp.task_id, replay=True, timeout=30)
        assert [e.sequence for e in replay] == list(range(1, len(replay) + 1))
        listed = stub.ListTrainingTasks(train_pb2.ListTrainingTasksRequest(), timeout=10)
        assert [t.task_id for t in listed.tasks] == [resp.task_id]
    assert not (workspace / "jobs.db").exists()  # everything went to PostgreSQL


def test_a_watcher_is_woken_by_notify(postgres):
    from services.train.store_pg import WATCH_FALLBACK_SECONDS, PgTaskStore

    store = PgTaskStore(postgres.new_database_url())
    store.create(task_id="a", strategy="trl", dataset_path="d", eval_dataset_path="", output_dir="o",
                 config={}, resolved={"output_dir": "/tmp/pg-notify-a"})
    attempt = store.claim("a")
    last = store.get("a").last_sequence
    listener = store.listener()
    assert listener.ready.wait(10), "the LISTEN connection did not come up"

    def later():
        time.sleep(0.3)
        writer = PgTaskStore(store.url)
        writer.report("a", attempt, "progress", fields={"current_step": 1})
        writer.close()

    async def wait() -> float:
        t0 = time.monotonic()
        await store.wait_for_events("a", last, 0.05)
        return time.monotonic() - t0

    thread = threading.Thread(target=later)
    thread.start()
    took = asyncio.run(wait())
    thread.join()
    assert 0.2 < took < WATCH_FALLBACK_SECONDS - 0.5, took  # woken by the event, not by the bound
    assert [e.data["current_step"] for e in store.events_after("a", last)] == [1]
    store.close()


def test_an_unreachable_postgresql_stops_start_up_naming_the_setting_and_host(workspace, tiny_model_dir):
    port = free_port()  # nothing listens there
    env = service_env({
        "storage.workspace": str(workspace), "storage.allowed_roots": [str(workspace)],
        "model.base_model_path": str(tiny_model_dir), "services.train.port": free_port(),
        "services.train.metrics_port": None, "storage.job_store": f"postgresql://wintrain:secret@127.0.0.1:{port}/jobs",
    })
    t0 = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "services.train"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "storage.job_store" in lines[-1] and f"127.0.0.1:{port}" in lines[-1], proc.stderr
    assert "secret" not in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("value", ["mysql://x", "jobs.db"])
def test_a_job_store_that_is_neither_sqlite_nor_postgresql_is_a_config_error(value, workspace, tiny_model_dir):
    from services.common.config import ConfigError
    from services.train.store import open_store

    config = make_config(workspace, tiny_model_dir, **{"storage.job_store": value})
    with pytest.raises(ConfigError, match="storage.job_store"):
        open_store(config)


def test_losing_the_database_turns_the_service_not_serving_and_back(workspace, tiny_model_dir, datasets_dir,
                                                                     postgres):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.support import wait_until
    from tests.train.conftest import get, rpc_error, start

    config = make_config(workspace, tiny_model_dir,
                         **train_overrides(**{"storage.job_store": postgres.new_database_url()}))
    with InProcessServer(config, "train", register) as server:
        stub = train_pb2_grpc.TrainServiceStub(server.channel())
        health = health_pb2_grpc.HealthStub(server.channel())

        def status():
            return health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status

        task_id = start(stub, output="out/kept", max_steps=3, **SMALL).task_id
        stub.CancelTraining(train_pb2.CancelTrainingRequest(task_id=task_id), timeout=10)
        wait_terminal(stub, task_id)
        assert status() == health_pb2.HealthCheckResponse.SERVING
        postgres.pause()
        try:
            assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, 30, 0.2)
            err = rpc_error(get, stub, task_id)
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            assert "storage.job_store" in err.details() and "unreachable" in err.details()
        finally:
            postgres.resume()
        assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, 60, 0.2)
        kept = get(stub, task_id)  # nothing lost
        assert kept.task_id == task_id and kept.status == train_pb2.TASK_STATUS_CANCELLED

"""The service as a real process (`python -m services.train`): killed with -9 while training
and restarted, it still lists every task, the one that was running is marked (never left
`running`), the queued one runs; a SIGTERM drains it, checkpointing the running worker. The
server process never loads torch."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from services.train.store import TrainJobStore
from tests.support import PYTHON, free_port, service_env, start_process, wait_for_health
from tests.train.conftest import get, start, wait_for
from wintrain.train.v1 import train_pb2, train_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

LONG = dict(max_steps=400, per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
            save_steps=0, max_length=128, learning_rate=1e-3, warmup_steps=0)


def test_server_modules_do_not_import_torch():
    code = ("import sys, services, services.train.server, services.train.scheduler, services.train.service; "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules))")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        time.sleep(0.2)


def _start_service(env, log: Path) -> subprocess.Popen:
    proc = start_process([PYTHON, "-m", "services.train"], env, log)
    port = env["WINTRAIN__SERVICES__TRAIN__PORT"]
    wait_for_health(f"127.0.0.1:{port}", timeout=90)
    return proc


def test_kill_9_restart_and_graceful_stop(workspace, tiny_model_dir, datasets_dir, tmp_path):
    import grpc

    port = free_port()
    env = service_env({
        "storage.workspace": str(workspace), "storage.allowed_roots": [str(workspace)],
        "model.base_model_path": str(tiny_model_dir), "services.train.port": port,
        "services.train.metrics_port": None, "train.worker_threads": 1, "train.cancel_grace_seconds": 20,
        "server.grace_seconds": 2, "logging.level": "WARNING",
    })
    service = _start_service(env, tmp_path / "service-1.log")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = train_pb2_grpc.TrainServiceStub(channel)
            a = start(stub, output="out/a", **LONG)
            b = start(stub, output="out/b", **LONG)
            wait_for(stub, a.task_id, lambda t: t.current_step >= 2, what="task a training")
            assert get(stub, b.task_id).status == train_pb2.TASK_STATUS_PENDING
            # The server never loaded torch; the training runs in its own process group.
            assert "libtorch" not in Path(f"/proc/{service.pid}/maps").read_text()
    finally:
        service.send_signal(signal.SIGKILL)
        service.wait(10)

    # Its worker notices the parent's death (SIGTERM from the kernel): checkpoint, then gone.
    store = TrainJobStore(workspace / "jobs.db")
    worker_a = store.get(a.task_id).worker_pid
    _wait_gone(worker_a, 60)

    service = _start_service(env, tmp_path / "service-2.log")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = train_pb2_grpc.TrainServiceStub(channel)
            listed = stub.ListTrainingTasks(train_pb2.ListTrainingTasksRequest(), timeout=10)
            assert {t.task_id for t in listed.tasks} == {a.task_id, b.task_id}
            task_a = get(stub, a.task_id)
            assert task_a.status == train_pb2.TASK_STATUS_INTERRUPTED, task_a
            assert task_a.error_message and Path(task_a.last_checkpoint).is_dir()  # resumable
            # The queued task was not forgotten: it starts now.
            wait_for(stub, b.task_id, lambda t: t.status == train_pb2.TASK_STATUS_RUNNING and t.current_step >= 1,
                     timeout=180, what="task b training after the restart")
    finally:
        service.send_signal(signal.SIGTERM)  # graceful: drain, checkpoint the worker, exit
        assert service.wait(60) == 0

    task_b = store.get(b.task_id)
    assert task_b.status == "interrupted" and task_b.last_checkpoint, task_b
    _wait_gone(task_b.worker_pid, 10)
    assert store.get(a.task_id).status == "interrupted"

"""Multi-node training through torchrun's c10d rendezvous (issue 20), on one machine: two
"nodes" on 127.0.0.1, each one torchrun launcher with one CPU process (gloo). The train
service is node 0 (it claims the task and starts its launcher, which hosts the rendezvous);
node 1 is the documented command from the top of the task's worker.log, run as its own process.
The run must equal a single-node 2-process run of the same config (every step's loss within
1e-4), and write its output once."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from services.common.config import REPO_ROOT, ConfigError
from services.train.server import register
from tests.support import InProcessServer, free_port, wait_until
from tests.train.conftest import get, start, wait_terminal
from wintrain.train.v1 import train_pb2, train_pb2_grpc

pytestmark = pytest.mark.slow

RUN = dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1, max_length=128,
           warmup_steps=0, learning_rate=1e-3, max_steps=4, save_steps=0, seed=3)


def _train_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _node_command(worker_log: str) -> list[str]:
    """The torchrun command the train service logged for this attempt, as another node runs it:
    from `-m torch.distributed.run` on (the service's own parent guard left out)."""
    line = next(l for l in worker_log.splitlines() if l.startswith("===== attempt "))
    args = shlex.split(line.split(": ", 1)[1])
    at = next(i for i in range(len(args) - 1) if args[i] == "-m" and args[i + 1] == "torch.distributed.run")
    return [sys.executable, *args[at:]]


def test_two_nodes_match_one_node_with_two_processes(train_config, datasets_dir, workspace):
    # Reference: one node, two processes.
    with InProcessServer(train_config, "train", register) as server:
        stub = train_pb2_grpc.TrainServiceStub(server.channel())
        ref = wait_terminal(stub, start(stub, output="out/one-node", num_processes=2, **RUN).task_id)
        assert ref.status == train_pb2.TASK_STATUS_COMPLETED, ref.error_message

    port = free_port()
    config = train_config.with_overrides({"train.nnodes": 2, "train.rdzv_endpoint": f"127.0.0.1:{port}"})
    with InProcessServer(config, "train", register) as server:
        stub = train_pb2_grpc.TrainServiceStub(server.channel())
        task_id = start(stub, output="out/two-nodes", num_processes=1, **RUN).task_id
        log_path = workspace / "runs" / task_id / "worker.log"
        assert wait_until(lambda: log_path.is_file() and "===== attempt" in log_path.read_text(), timeout=60)
        command = _node_command(log_path.read_text())
        assert command[1:] == [
            "-m", "torch.distributed.run", "--nproc_per_node", "1", "--nnodes", "2", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"{task_id}-1", "-m", "services.train.worker",
            task_id, "--workspace", str(workspace), "--attempt", "1",
            "--config", str(workspace / "runs" / task_id / "service_config.json")]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(workspace / "node1.log", "wb") as node_log:
            node1 = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=node_log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            done = wait_terminal(stub, task_id, timeout=400)
            assert node1.wait(120) == 0, (workspace / "node1.log").read_text()[-3000:]
        finally:
            if node1.poll() is None:
                node1.kill()
        node1_log = (workspace / "node1.log").read_text()
        assert done.status == train_pb2.TASK_STATUS_COMPLETED, done.error_message + "\n" + node1_log[-3000:]

    one, two = workspace / "out" / "one-node", workspace / "out" / "two-nodes"
    ref_steps = [e for e in _train_log(one / "training_log.jsonl") if e["kind"] == "train"]
    steps = [e for e in _train_log(two / "training_log.jsonl") if e["kind"] == "train"]
    # Written once: one line per step (two writers would double them), the same files as the
    # one-node run, one model.
    assert [e["step"] for e in steps] == [e["step"] for e in ref_steps] == [1, 2, 3, 4]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    # World size 2 (ten conversations, two ranks x batch 2: three steps an epoch), the same losses.
    assert steps[1]["epoch"] == pytest.approx(2 / 3, abs=1e-3)
    for a, b in zip(steps, ref_steps):
        assert abs(a["loss"] - b["loss"]) <= 1e-4, (a, b)
    assert abs(done.loss - ref.loss) <= 1e-4, (done.loss, ref.loss)


def test_nnodes_above_one_needs_a_rendezvous_endpoint(train_config):
    with pytest.raises(ConfigError) as info:
        train_config.with_overrides({"train.nnodes": 2, "train.rdzv_endpoint": None})
    assert "train.nnodes" in str(info.value) and "train.rdzv_endpoint" in str(info.value)
    for bad in (0, "two", True):
        with pytest.raises(ConfigError, match="train.nnodes"):
            train_config.with_overrides({"train.nnodes": bad})
    with pytest.raises(ConfigError, match="train.rdzv_endpoint"):
        train_config.with_overrides({"train.nnodes": 2, "train.rdzv_endpoint": "no-port"})

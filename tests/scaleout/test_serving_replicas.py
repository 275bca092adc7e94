"""Serving replicas (issue 20): two real inference processes on one shared workspace behind one
gateway whose `services.inference.addresses` lists both. gRPC's round_robin with health checking
spreads the calls (each replica's own Prometheus counters prove it); a kill -9 of one ends its
in-flight stream with UNAVAILABLE (an SSE error event, not a cut) and the next 50 calls all
succeed on the other; a LoRA adapter trained by the train service is served by either replica."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.config import REPO_ROOT
from tests.gateway.helpers import GatewayServer
from tests.support import free_port, make_config, service_env, start_process, wait_for_health, wait_until
from tools.tiny_model import DATASETS_DIR
from wintrain.inference.v1 import inference_pb2 as pb
from wintrain.inference.v1 import inference_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow


class Replica:
    """One `python -m services.inference` process with its own gRPC and metrics ports."""

    def __init__(self, workspace: Path, base_model: Path, log_path: Path):
        self.port, self.metrics_port = free_port(), free_port()
        env = service_env({
            "storage.workspace": str(workspace), "storage.allowed_roots": [str(workspace)],
            "model.base_model_path": str(base_model), "model.torch_threads": 1,
            "inference.auto_load": True, "services.inference.port": self.port,
            "services.inference.metrics_port": self.metrics_port, "server.grace_seconds": 1,
        })
        self.log_path = log_path
        self.proc = start_process([sys.executable, "-m", "services.inference"], env, log_path)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def chats(self) -> float:
        return self.metric("wintrain_rpc_requests_total", method="Chat", code="OK")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except Exception:  # noqa: BLE001
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model_dir):
    """One shared workspace (models, datasets) and two inference replicas on it."""
    root = tmp_path_factory.mktemp("scaleout")
    workspace = root / "ws"
    base = workspace / "models" / "tiny-chat"
    shutil.copytree(tiny_model_dir, base)
    (workspace / "datasets").mkdir()
    shutil.copy(DATASETS_DIR / "qa_facts.jsonl", workspace / "datasets" / "qa_facts.jsonl")
    replicas = [Replica(workspace, base, root / f"inference-{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            wait_for_health(replica.address, timeout=180)
        config = make_config(workspace, base, **{
            "services.inference.addresses": ",".join(r.address for r in replicas)})
        with GatewayServer(config) as gateway:
            yield {"workspace": workspace, "base": base, "replicas": replicas, "config": config,
                   "url": gateway.url}
    finally:
        for replica in replicas:
            replica.stop()


def _chat(client: httpx.Client, **extra) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0, **extra}
    return client.post("/api/inference/chat", json=body)


def test_calls_spread_over_both_replicas(shared):
    replicas = shared["replicas"]
    before = [r.chats() for r in replicas]
    with httpx.Client(base_url=shared["url"], timeout=60) as client:
        for _ in range(20):
            r = _chat(client)
            assert r.status_code == 200, r.text
        health = client.get("/health").json()
    served = [r.chats() - b for r, b in zip(replicas, before)]
    assert sum(served) == 20
    assert min(served) >= 5, f"round_robin should spread 20 calls over two replicas, got {served}"
    assert health["services"]["inference"] == "SERVING"


def test_a_lora_adapter_trained_by_the_train_service_is_served_by_every_replica(shared):
    from services.train.server import register
    from tests.support import InProcessServer
    from wintrain.train.v1 import train_pb2, train_pb2_grpc

    config = shared["config"].with_overrides({"train.worker_threads": 1, "train.watch_poll_seconds": 0.1})
    with InProcessServer(config, "train", register) as train:
        stub = train_pb2_grpc.TrainServiceStub(train.channel())
        cfg = train_pb2.TrainingConfig(max_steps=3, per_device_train_batch_size=10, learning_rate=5e-3,
                                       save_steps=0, max_length=128, logging_steps=1)
        cfg.lora_config.CopyFrom(train_pb2.LoraConfig(r=8, lora_alpha=16))
        task = stub.StartTraining(train_pb2.StartTrainingRequest(
            strategy=train_pb2.STRATEGY_LORA, dataset_path="datasets/qa_facts.jsonl", output_dir="adapters/qa",
            config=cfg), timeout=60)
        events = list(stub.WatchTraining(train_pb2.WatchTrainingRequest(task_id=task.task_id), timeout=300))
        done = stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id=task.task_id), timeout=10)
        assert done.status == train_pb2.TASK_STATUS_COMPLETED, (done, events[-1:])
    adapter = shared["workspace"] / "adapters" / "qa"
    assert (adapter / "adapter_model.safetensors").is_file()

    request = pb.ChatRequest(model_path="adapters/qa", messages=[pb.ChatMessage(role="user", content="hi")],
                             max_tokens=8, min_tokens=8, temperature=0)
    answers = []
    for replica in shared["replicas"]:  # each replica directly: it reads the adapter from the workspace
        with grpc.insecure_channel(replica.address) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            info = stub.LoadModel(pb.LoadModelRequest(model_path="adapters/qa"), timeout=120)
            assert info.kind == "adapter" and Path(info.path) == adapter.resolve(), info
            assert Path(info.base_model_path) == shared["base"].resolve(), info
            answers.append(stub.Chat(request, timeout=120).content)
    assert answers[0] == answers[1], answers
    with httpx.Client(base_url=shared["url"], timeout=120) as client:  # and through the gateway, wherever it lands
        for _ in range(4):
            r = _chat(client, model_path="adapters/qa", max_tokens=8, min_tokens=8)
            assert r.status_code == 200, r.text
            assert r.json()["content"] == answers[0]


def _sse_events(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: "):]


def test_kill_9_a_replica_ends_its_stream_unavailable_and_the_next_50_calls_succeed(shared):
    replicas = shared["replicas"]
    body = {"messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": 1000, "min_tokens": 1000,
            "temperature": 0}
    with httpx.Client(base_url=shared["url"], timeout=120) as client:
        with client.stream("POST", "/api/inference/chat/stream", json=body) as response:
            assert response.status_code == 200
            events = _sse_events(response)
            first = json.loads(next(events))
            assert "error" not in first, first
            streaming = [r for r in replicas if r.metric("wintrain_rpc_streams_open", method="ChatStream") >= 1]
            assert len(streaming) == 1, "exactly one replica holds the stream"
            victim = streaming[0]
            survivor = next(r for r in replicas if r is not victim)
            victim.kill()
            rest = list(events)  # the stream must end with an error event and [DONE], not a cut connection
        assert rest and rest[-1] == "[DONE]", rest[-3:]
        error = json.loads(rest[-2])["error"]
        assert error["code"] == "UNAVAILABLE", error

        before = survivor.chats()
        statuses = [_chat(client).status_code for _ in range(50)]
        assert statuses == [200] * 50, statuses
        assert survivor.chats() - before == 50
        # /health still SERVING: one replica is enough.
        assert client.get("/health").json()["services"]["inference"] == "SERVING"

"""Start the real processes the way `make run` does and check every health endpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.config import REPO_ROOT, SERVICE_NAMES
from tests.support import free_port, service_env, tail_logs, wait_for_line

pytestmark = pytest.mark.e2e

EXPECTED_SERVICE = {
    "data": "wintrain.data.v1.DataService",
    "train": "wintrain.train.v1.TrainService",
    "inference": "wintrain.inference.v1.InferenceService",
    "eval": "wintrain.eval.v1.EvalService",
    "export": "wintrain.export.v1.ExportService",
}


def _list_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=5)
        return {s.name for r in responses for s in r.list_services_response.service}


def test_make_run_topology_starts_serves_and_stops_cleanly(tmp_path, tiny_model_dir):
    ports = {name: free_port() for name in SERVICE_NAMES}
    api_port = free_port()
    metrics_ports = {name: free_port() for name in SERVICE_NAMES}
    overrides = {f"services.{n}.port": p for n, p in ports.items()}
    overrides.update({f"services.{n}.metrics_port": p for n, p in metrics_ports.items()})
    overrides.update({"api.port": api_port, "storage.workspace": str(tmp_path / "ws"),
                      "model.base_model_path": str(tiny_model_dir), "inference.auto_load": True,
                      "server.grace_seconds": 3})
    proc = subprocess.Popen([sys.executable, "-m", "services.common.launcher", "--log-dir", str(tmp_path / "logs"),
                             "--timeout", "240"],
                            cwd=REPO_ROOT, env=service_env(overrides), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = wait_for_line(proc, "Win-Train is up", 300)
        assert any("Win-Train is up" in l for l in lines), "".join(lines) + tail_logs(tmp_path / "logs")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= len(SERVICE_NAMES) + 1

        for name, port in ports.items():
            address = f"127.0.0.1:{port}"
            with grpc.insecure_channel(address) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
            assert EXPECTED_SERVICE[name] in _list_services(address)

        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/health", timeout=10) as resp:
            body = json.loads(resp.read())
        assert resp.status == 200 and body["status"] == "healthy"

        # A request id given to the gateway reaches the log lines of every process it touches.
        request = urllib.request.Request(f"http://127.0.0.1:{api_port}/api/data/validate?file_path=nowhere.jsonl",
                                         method="POST", headers={"X-Request-Id": "e2e-trace-42"})
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and exc.headers["x-request-id"] == "e2e-trace-42"
        else:  # pragma: no cover
            raise AssertionError("a missing file must be 404")
        time.sleep(0.5)
        for name in ("gateway", "data"):
            lines = [json.loads(l) for l in (tmp_path / "logs" / f"{name}.log").read_text().splitlines()
                     if l.startswith("{") and "e2e-trace-42" in l]
            assert lines and all(l["request_id"] == "e2e-trace-42" for l in lines), name

        # Each service's own Prometheus endpoint moves with its work.
        from wintrain.inference.v1 import inference_pb2, inference_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{ports['inference']}") as ch:
            reply = inference_pb2_grpc.InferenceServiceStub(ch).Chat(inference_pb2.ChatRequest(
                messages=[inference_pb2.ChatMessage(role="user", content="你好")], max_tokens=8, temperature=0),
                timeout=60)
        assert reply.usage.completion_tokens > 0
        text = _scrape(metrics_ports["inference"])
        assert _sample(text, "wintrain_tokens_generated_total") >= reply.usage.completion_tokens
        assert _sample(text, "wintrain_model_cache_models") == 1
        assert 'wintrain_rpc_requests_total{code="OK",method="Chat",service="inference"}' in text
        text = _scrape(metrics_ports["data"])
        assert "wintrain_rpc_requests_total" in text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        gone, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, f"orphans left: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed")



def test_make_run_refuses_ports_another_instance_holds_before_starting_anything(tmp_path, tiny_model_dir):
    """A second `make run` on taken ports must not report the other instance's services as its
    own ("SERVING", "Win-Train is up"): it names every taken port's setting and starts nothing."""
    import socket

    ports = {name: free_port() for name in SERVICE_NAMES}
    metrics_ports = {name: free_port() for name in SERVICE_NAMES}
    api_port = free_port()
    overrides = {f"services.{n}.port": p for n, p in ports.items()}
    overrides.update({f"services.{n}.metrics_port": p for n, p in metrics_ports.items()})
    overrides.update({"api.port": api_port, "storage.workspace": str(tmp_path / "ws"),
                      "model.base_model_path": str(tiny_model_dir)})
    held = []
    for port in (ports["data"], metrics_ports["eval"], api_port):
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        sock.listen()
        held.append(sock)
    try:
        proc = subprocess.run([sys.executable, "-m", "services.common.launcher", "--timeout", "60"],
                              cwd=REPO_ROOT, env=service_env(overrides), capture_output=True, text=True,
                              timeout=120)
    finally:
        for sock in held:
            sock.close()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "SERVING" not in proc.stdout and "is up" not in proc.stdout, proc.stdout
    assert f"services.data.port 127.0.0.1:{ports['data']}: address already in use" in proc.stderr, proc.stderr
    assert f"services.eval.metrics_port 127.0.0.1:{metrics_ports['eval']}: address already in use" in proc.stderr
    assert f"api.port 127.0.0.1:{api_port}: address already in use" in proc.stderr
    assert "services.train.port" not in proc.stderr  # only what is taken is named

"""Hostile input straight to the gRPC services (issue 15 item 6) and a service that cannot bind
its ports (issue 15, "Tests that hold it"): real servers, real processes, raw bytes."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from services.common.rpc_status import decode_rpc_error
from services.data.server import register as register_data
from tests.support import InProcessServer, free_port, make_config

ROOT = Path(__file__).resolve().parents[2]

# Field 1 (a string: file_path / service), wire type 2, length 1, one byte that is not UTF-8.
INVALID_UTF8_STRING = b"\x0a\x01\xff"
GARBAGE = b"\xff\xff\xff"


@pytest.fixture
def data_server(tmp_path):
    cfg = make_config(tmp_path / "ws", tmp_path / "no-model")
    with InProcessServer(cfg, "data", register_data) as server:
        yield server


def _unary(channel, path: str, payload: bytes):
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    return call(payload, timeout=10)


@pytest.mark.parametrize("payload", [GARBAGE, INVALID_UTF8_STRING], ids=["garbage", "invalid-utf8"])
@pytest.mark.parametrize("path, type_name", [
    ("/wintrain.data.v1.DataService/ValidateDataset", "wintrain.data.v1.ValidateDatasetRequest"),
    ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
])
def test_malformed_request_bytes_are_invalid_argument(data_server, payload, path, type_name):
    with pytest.raises(grpc.RpcError) as info:
        _unary(data_server.channel(), path, payload)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    failure = decode_rpc_error(info.value)
    assert failure.message == f"request: not a valid {type_name} message"
    assert [f for f, _ in failure.field_violations] == ["request"]


@pytest.mark.parametrize("payload", [GARBAGE, INVALID_UTF8_STRING], ids=["garbage", "invalid-utf8"])
def test_malformed_request_to_a_server_stream_is_invalid_argument(data_server, payload):
    call = data_server.channel().unary_stream("/grpc.health.v1.Health/Watch",
                                              request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        list(call(payload, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "not a valid grpc.health.v1.HealthCheckRequest message" in info.value.details()


def test_well_formed_bytes_still_reach_the_method(data_server):
    """The guard must not refuse a valid message: a missing file is NOT_FOUND/INVALID_ARGUMENT
    from the data service itself, naming file_path, not `request`."""
    from wintrain.data.v1 import data_pb2

    raw = data_pb2.ValidateDatasetRequest(file_path="nope.jsonl").SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        _unary(data_server.channel(), "/wintrain.data.v1.DataService/ValidateDataset", raw)
    assert "file_path" in info.value.details()
    from grpc_health.v1 import health_pb2
    answer = _unary(data_server.channel(), "/grpc.health.v1.Health/Check",
                    health_pb2.HealthCheckRequest(service="").SerializeToString())
    assert health_pb2.HealthCheckResponse.FromString(answer).status == health_pb2.HealthCheckResponse.SERVING


def _run_data_service(tmp_path: Path, overrides: dict) -> subprocess.CompletedProcess:
    from tests.support import service_env

    env = service_env({"services.data.host": "127.0.0.1", "storage.workspace": str(tmp_path / "ws"),
                       "logging.level": "INFO", **overrides})
    return subprocess.run([sys.executable, "-m", "services.data"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("setting", ["port", "metrics_port"])
def test_a_port_in_use_names_address_and_setting_and_exits_1(tmp_path, setting):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen(1)
        busy = taken.getsockname()[1]
        ports = {"port": free_port(), "metrics_port": free_port(), setting: busy}
        result = _run_data_service(tmp_path, {f"services.data.{k}": v for k, v in ports.items()})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr, result.stderr
    expected = f"services.data.{setting} 127.0.0.1:{busy}: address already in use"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"wintrain-data: {expected}"], result.stderr


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("metrics_host, public_metrics", [(None, False), ("0.0.0.0", True)],
                         ids=["keys-default-loopback", "explicit-metrics-host"])
def test_metrics_listen_on_loopback_when_api_keys_are_configured(tmp_path, metrics_host, public_metrics):
    """The service listens on all addresses (keys configured); its unauthenticated /metrics
    only on 127.0.0.1 unless services.data.metrics_host says otherwise. 127.0.0.2 stands for
    "another address of this host": reachable for a 0.0.0.0 listener, refused for 127.0.0.1."""
    import urllib.request

    from tests.support import service_env, start_process, wait_for_health

    port, metrics_port = free_port(), free_port()
    overrides = {"services.data.host": "0.0.0.0", "services.data.port": port,
                 "services.data.metrics_port": metrics_port, "storage.workspace": str(tmp_path / "ws")}
    if metrics_host is not None:
        overrides["services.data.metrics_host"] = metrics_host
    env = service_env(overrides)
    env["WINTRAIN_API_KEYS"] = "hostile-test-key"
    proc = start_process([sys.executable, "-m", "services.data"], env, tmp_path / "data.log")
    try:
        wait_for_health(f"127.0.0.2:{port}", timeout=60)  # the RPCs are on every address
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
            assert b"wintrain_rpc_requests_total" in answer.read()
        assert _reachable("127.0.0.2", metrics_port) is public_metrics
    finally:
        proc.terminate()
        proc.wait(30)


def test_metrics_host_without_keys_on_a_public_address_is_refused(tmp_path):
    result = _run_data_service(tmp_path, {"services.data.port": free_port(),
                                          "services.data.metrics_port": free_port(),
                                          "services.data.metrics_host": "0.0.0.0"})
    assert result.returncode == 2, result.stderr
    assert "services.data.metrics_host='0.0.0.0' is not a loopback address" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_gateway_port_in_use_names_address_and_setting_and_exits_1(tmp_path):
    from tests.support import service_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen(1)
        busy = taken.getsockname()[1]
        env = service_env({"api.host": "127.0.0.1", "api.port": busy, "storage.workspace": str(tmp_path / "ws")})
        result = subprocess.run([sys.executable, "-m", "gateway"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"wintrain-gateway: api.port 127.0.0.1:{busy}: address already in use"], result.stderr

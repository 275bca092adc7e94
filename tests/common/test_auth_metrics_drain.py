"""Auth on direct gRPC, refusal to bind publicly without keys, RPC metrics, and drain."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from services.common.config import ConfigError
from services.common.metrics import start_metrics_server
from services.common.server import create_server, service_full_name
from tests.support import InProcessServer, make_config
from wintrain.train.v1 import train_pb2, train_pb2_grpc


class SlowTrainServicer(train_pb2_grpc.TrainServiceServicer):
    """Stand-in: a slow unary call and an endless stream, to watch the bootstrap drain them."""

    async def GetTrainingStatus(self, request, context):
        await asyncio.sleep(1.0)
        return train_pb2.TrainingTask(task_id=request.task_id)

    async def WatchTraining(self, request, context):
        yield train_pb2.TrainingEvent(sequence=1, task_id=request.task_id)
        await asyncio.sleep(3600)


def register_slow(runtime):
    train_pb2_grpc.add_TrainServiceServicer_to_server(SlowTrainServicer(), runtime.server)
    return [service_full_name(train_pb2, "TrainService")]


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path / "ws", tmp_path / "model")


def test_grpc_requires_the_api_key_when_configured(cfg):
    cfg = cfg.with_overrides({"auth.api_keys": ["s3cret"]})
    with InProcessServer(cfg, "train", register_slow) as server:
        ch = server.channel()
        stub = train_pb2_grpc.TrainServiceStub(ch)
        req = train_pb2.GetTrainingStatusRequest(task_id="t")
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTrainingStatus(req, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            stub.GetTrainingStatus(req, metadata=(("authorization", "Bearer wrong"),), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.GetTrainingStatus(req, metadata=(("authorization", "Bearer s3cret"),), timeout=5)
        assert ok.task_id == "t"
        # Health stays open for probes and load balancers.
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def _create_public(config):
    """create_server on 0.0.0.0 inside an event loop of its own, as a service builds it (a
    grpc.aio server needs one; another test may have left none current)."""
    async def build():
        return create_server(config, "train", register_slow, port=0, host="0.0.0.0")

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(build())
    finally:
        loop.close()


def test_public_bind_without_keys_is_refused(cfg):
    with pytest.raises(ConfigError) as err:
        _create_public(cfg)
    assert "services.train.host" in str(err.value) and "api_keys" in str(err.value)
    for allowed in (cfg.with_overrides({"auth.api_keys": ["k"]}),
                    cfg.with_overrides({"auth.allow_insecure_public": True})):
        runtime, port = _create_public(allowed)
        assert port > 0


def test_rpc_metrics_move_and_are_served(cfg):
    def value():
        return REGISTRY.get_sample_value("wintrain_rpc_requests_total",
                                         {"service": "train", "method": "GetTrainingStatus", "code": "OK"}) or 0

    before = value()
    with InProcessServer(cfg, "train", register_slow) as server:
        stub = train_pb2_grpc.TrainServiceStub(server.channel())
        stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id="a"), timeout=5)
    assert value() == before + 1
    port = start_metrics_server(0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "wintrain_rpc_requests_total" in text and "wintrain_rpc_duration_seconds_bucket" in text


def test_drain_finishes_unary_calls_and_ends_streams_with_a_status(cfg):
    with InProcessServer(cfg, "train", register_slow) as server:
        stub = train_pb2_grpc.TrainServiceStub(server.channel())
        stream = stub.WatchTraining(train_pb2.WatchTrainingRequest(task_id="w"), timeout=30)
        assert next(stream).sequence == 1
        unary_result = {}

        def slow_call():
            try:
                unary_result["task"] = stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id="u"),
                                                              timeout=10)
            except grpc.RpcError as exc:  # pragma: no cover - the assertion below reports it
                unary_result["error"] = exc

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.3)  # the unary call is in flight
        started = time.monotonic()
        server.stop(grace=5)
        caller.join(10)
        assert unary_result.get("task") is not None and unary_result["task"].task_id == "u", unary_result
        with pytest.raises(grpc.RpcError) as err:
            next(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in err.value.details()
        assert time.monotonic() - started < 5

"""Hostile input straight to the gRPC services (issue 15 item 6) and a service that cannot bind
its ports (issue 15, "Tests that hold it"): real servers, real processes, raw bytes."""

from __future__ import annotations

import os
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

"""Hostile input over raw HTTP connections to the real uvicorn gateway (issue 15 items 4, 5):
the gateway always answers, and a bad request does not poison its keep-alive connection."""

from __future__ import annotations

import http.client
import json

import pytest

START = {"strategy": "trl", "dataset_path": "d", "output_dir": "o", "config": {"max_steps": 3}}


def _post(conn: http.client.HTTPConnection, path: str, raw: bytes) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request("POST", path, body=raw, headers={"content-type": "application/json"})
    response = conn.getresponse()  # a dropped connection raises here (RemoteDisconnected)
    return response, response.read()


@pytest.mark.parametrize("key,shown", [
    ("x ", "x%20"), ("a\r\nb", "a%0D%0Ab"), ("a\u0000", "a%00"), ("", '""'), ("ключ", "%D0%BA%D0%BB%D1%8E%D1%87"),
])
def test_hostile_unknown_key_is_answered_with_a_printable_header(gateway, key, shown):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    try:
        for path in ("/api/data/process", "/api/train/start"):
            body = {**START, "a": 1, key: 2} if path == "/api/train/start" else {"a": 1, key: 2}
            response, _ = _post(conn, path, json.dumps(body).encode())
            assert response.status < 500, (path, response.status)
            header = response.getheader("x-wintrain-ignored-fields")
            assert header is not None and all(0x20 <= ord(c) <= 0x7E for c in header), header
            assert shown in header.split(", "), header
        # the same connection still answers
        response, _ = _post(conn, "/api/train/start", json.dumps(START).encode())
        assert response.status == 200
    finally:
        conn.close()


@pytest.mark.parametrize("depth", [100, 1500])
def test_deeply_nested_json_is_400_naming_body_and_the_connection_lives(gateway, depth):
    nested = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    try:
        response, raw = _post(conn, "/api/train/start", nested)
        assert response.status == 400, raw[:300]
        body = json.loads(raw)
        assert body["code"] == "INVALID_ARGUMENT" and body["details"][0]["field"] == "body"
        assert "nested deeper than 64" in body["details"][0]["description"]
        response, raw = _post(conn, "/api/train/start", json.dumps(START).encode())
        assert response.status == 200, raw[:300]
        assert json.loads(raw)["status"] == "pending"
    finally:
        conn.close()


def test_deeply_nested_json_on_openai_route_is_400_in_openai_shape(gateway):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    try:
        response, raw = _post(conn, "/v1/chat/completions", b'{"messages":' + b"[" * 1500 + b"]" * 1500 + b"}")
        assert response.status == 400, raw[:300]
        error = json.loads(raw)["error"]
        assert error["param"] == "body" and "nested deeper" in error["message"]
    finally:
        conn.close()


def test_ten_thousand_character_task_id_is_not_found_over_grpc_and_404_over_http(base_config):
    """Issue 15 item 7: the NOT_FOUND message echoes the id; unbounded, it exceeded gRPC's 8 KiB
    metadata limit and the call failed with RESOURCE_EXHAUSTED (429, which invites retries)."""
    import grpc

    from services.common.rpc_status import decode_rpc_error
    from services.train.server import register
    from tests.gateway.helpers import gateway_over
    from tests.support import InProcessServer
    from wintrain.train.v1 import train_pb2, train_pb2_grpc

    long_id = "t" * 10_000
    with InProcessServer(base_config, "train", register) as train:
        with grpc.insecure_channel(f"127.0.0.1:{train.port}") as channel:
            stub = train_pb2_grpc.TrainServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id=long_id), timeout=10)
            failure = decode_rpc_error(info.value)
            assert failure.code == "NOT_FOUND", failure
            assert len(failure.message.encode()) <= 1000 and "characters]" in failure.message
        with gateway_over(base_config, {"train": train}) as gw:
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
            try:
                conn.request("GET", f"/api/train/status/{long_id}")
                response = conn.getresponse()
                body = json.loads(response.read())
                assert response.status == 404 and body["code"] == "NOT_FOUND", body
            finally:
                conn.close()

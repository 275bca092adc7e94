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

"""Every 429 of the gateway says when to come back (issue 15 item 11): `Retry-After` on a
backend's RESOURCE_EXHAUSTED, whether the route is unary JSON, a stream refused before its
first event, or the OpenAI-compatible API; no other status carries it. Real uvicorn, real
gRPC, fake servicers (tests/gateway/helpers.py)."""

from __future__ import annotations

import pytest

from gateway.errors import RETRY_AFTER_SECONDS


def test_retry_after_is_a_positive_whole_number_of_seconds():
    assert isinstance(RETRY_AFTER_SECONDS, int) and RETRY_AFTER_SECONDS >= 1


def test_unary_429_carries_retry_after(client):
    r = client.post("/api/data/validate", params={"file_path": "error:RESOURCE_EXHAUSTED"})
    assert r.status_code == 429
    assert r.headers.get("retry-after") == str(RETRY_AFTER_SECONDS)
    assert r.json()["code"] == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("code", ["NOT_FOUND", "UNAVAILABLE", "INVALID_ARGUMENT"])
def test_other_errors_carry_no_retry_after(client, code):
    r = client.post("/api/data/validate", params={"file_path": f"error:{code}"})
    assert r.status_code != 429
    assert "retry-after" not in r.headers


def test_stream_refused_before_its_first_event_carries_retry_after(client):
    r = client.post("/api/inference/chat/stream", json={"messages": [{"role": "user", "content": "busy-first"}]})
    assert r.status_code == 429, r.text
    assert r.headers.get("retry-after") == str(RETRY_AFTER_SECONDS)


def test_openai_stream_429_carries_retry_after(client):
    body = {"model": "default", "stream": True, "messages": [{"role": "user", "content": "busy-first"}]}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert r.headers.get("retry-after") == str(RETRY_AFTER_SECONDS)

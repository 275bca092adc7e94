"""Server-streaming RPCs as Server-Sent Events: framing, errors, and cancellation of the
upstream call when the HTTP client goes away (real uvicorn, real gRPC, slow fake stream)."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n"), repr(text[-20:])
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), repr(block)
        events.append(block[len("data: "):])
    return events


def test_chat_stream_framing_tokens_then_done(client):
    r = client.post("/api/inference/chat/stream", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-request-id"]
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert [p["token"] for p in payloads[:3]] == ["你", "好", "!"]
    assert payloads[0] == {"token": "你"}  # the original event shape; unset optionals absent
    assert payloads[-1]["finish_reason"] == "stop" and payloads[-1]["usage"]["total_tokens"] == 7


def test_watch_stream_get_with_path_param_and_int64_numbers(client):
    r = client.get("/api/train/watch/t-5")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert [p["sequence"] for p in payloads] == [2**40, 2**40 + 1, 2**40 + 2]
    assert {p["kind"] for p in payloads} == {"progress"} and payloads[0]["status"] == "running"
    assert all(p["task_id"] == "t-5" for p in payloads)


@pytest.mark.parametrize("query,seen", [
    ({"replay": "true"}, "replay=True from=0"), ({"replay": "1"}, "replay=True from=0"),
    ({"replay": "FALSE", "from_sequence": "7"}, "replay=False from=7"), ({}, "replay=False from=0"),
])
def test_watch_query_booleans_and_numbers_reach_the_request(client, query, seen):
    r = client.get("/api/train/watch/t-5", params=query)
    payloads = [json.loads(e) for e in sse_events(r.text)[:-1]]
    assert payloads and all(p["message"] == seen for p in payloads)


def test_a_query_boolean_that_is_not_one_is_400_naming_the_field(client):
    r = client.get("/api/train/watch/t-5", params={"replay": "perhaps"})
    assert r.status_code == 400
    assert [d["field"] for d in r.json()["details"]] == ["replay"]


def test_error_mid_stream_is_an_error_event_then_done(client):
    r = client.post("/api/inference/chat/stream", json={"messages": [{"role": "user", "content": "fail"}]})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert [json.loads(e)["token"] for e in events[:2]] == ["你", "好"]
    error = json.loads(events[2])["error"]
    assert error["code"] == "RESOURCE_EXHAUSTED" and error["success"] is False
    assert error["message"] == "generation queue is full"
    assert events[3:] == ["[DONE]"]


def test_error_before_the_first_event_is_a_plain_http_error(client):
    r = client.post("/api/inference/chat/stream", json={"messages": [{"role": "user", "content": "fail-first"}]})
    assert r.status_code == 400
    assert r.json()["details"] == [{"field": "messages[0].content", "description": "refused"}]
    r = client.get("/api/train/watch/missing")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"


def test_bad_body_of_a_stream_route_is_400(client):
    r = client.post("/api/inference/chat/stream", json={"messages": "hi"})
    assert r.status_code == 400 and r.json()["details"][0]["field"] == "messages"


def test_client_disconnect_cancels_the_upstream_call(gateway, fake_state):
    fake_state.stream_cancelled.clear()
    fake_state.stream_started.clear()
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        with c.stream("POST", "/api/inference/chat/stream",
                      json={"messages": [{"role": "user", "content": "slow"}]}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines) == 'data: {"token":"first"}'
            assert fake_state.stream_started.is_set()
            assert not fake_state.stream_cancelled.is_set()
        # Leaving the block closes the connection: the backend generator must be cancelled
        # long before its 30 s of tokens run out.
        closed_at = time.monotonic()
    assert fake_state.stream_cancelled.wait(5), "upstream ChatStream was not cancelled"
    assert time.monotonic() - closed_at < 5
    sent = fake_state.tokens_sent
    time.sleep(0.6)
    assert fake_state.tokens_sent == sent  # nothing more is generated


def test_disconnect_before_the_first_event_cancels_too(gateway, fake_state):
    fake_state.stream_cancelled.clear()
    fake_state.stream_started.clear()
    body = json.dumps({"messages": [{"role": "user", "content": "slow-start"}]}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(b"POST /api/inference/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert fake_state.stream_started.wait(5)
        # No event yet (the backend sleeps); headers may or may not be out. Hang up now.
    assert fake_state.stream_cancelled.wait(5), "upstream call was not cancelled before its first message"

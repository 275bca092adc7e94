"""The generic transcoder over real HTTP (uvicorn) and real gRPC, against fake servicers:
request building, JSON conventions, envelope, error mapping, request ids, health."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.gateway.helpers import GatewayServer, all_at
from tests.support import InProcessServer, free_port

ERROR_CASES = [
    ("INVALID_ARGUMENT", 400), ("FAILED_PRECONDITION", 400), ("OUT_OF_RANGE", 400),
    ("UNAUTHENTICATED", 401), ("PERMISSION_DENIED", 403), ("NOT_FOUND", 404),
    ("ALREADY_EXISTS", 409), ("ABORTED", 409), ("RESOURCE_EXHAUSTED", 429), ("CANCELLED", 499),
    ("UNIMPLEMENTED", 501), ("UNAVAILABLE", 503), ("DEADLINE_EXCEEDED", 504),
    ("INTERNAL", 500), ("UNKNOWN", 500), ("DATA_LOSS", 500),
]


@pytest.mark.parametrize("code,status", ERROR_CASES)
def test_grpc_code_maps_to_http_status_and_error_body(client, code, status):
    r = client.post("/api/data/validate", params={"file_path": f"error:{code}"})
    assert r.status_code == status
    body = r.json()
    assert body["success"] is False
    assert body["code"] == code
    assert body["message"] == f"fake {code}"
    assert isinstance(body["details"], list)
    if code == "INVALID_ARGUMENT":
        assert body["details"] == [{"field": "file_path", "description": "bad because INVALID_ARGUMENT"}]


def test_unexpected_backend_exception_is_500_without_internals(client):
    r = client.post("/api/data/validate", params={"file_path": "crash"})
    assert r.status_code == 500
    assert r.json()["code"] == "INTERNAL"
    assert "unexpected" not in r.json()["message"]


def test_envelope_with_success_field_and_query_binding(client):
    r = client.post("/api/data/validate?file_path=ok.jsonl")
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["success", "message", "data", "timestamp"]
    assert body["success"] is True and body["message"] == "Dataset validated"
    assert body["data"]["is_valid"] is True and body["data"]["total_samples"] == 5
    # Fields without presence are printed even when zero/empty (the original shape).
    assert body["data"]["invalid_samples"] == 0 and body["data"]["error_messages"] == []
    assert body["data"]["stats"]["messages_per_role"] == {"user": 5}
    assert body["timestamp"][:2] == "20" and "T" in body["timestamp"]

    bad = client.post("/api/data/validate", params={"file_path": "invalid.jsonl"}).json()
    assert bad["success"] is False and bad["data"]["error_messages"] == ["line 1: bad"]


def test_envelope_with_data_field_keeps_other_fields_beside_data(client):
    r = client.get("/api/train/tasks", params={"page_size": "2", "page_token": "x"})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["message"] == "Tasks listed"
    assert [t["task_id"] for t in body["data"]] == ["a", "b"]
    assert body["next_page_token"] == "after-2-x"  # query params reached the request
    assert [t["status"] for t in body["data"]] == ["running", "completed"]


def test_path_parameter_enum_words_and_unset_optionals(client):
    r = client.get("/api/train/status/abc-123")
    assert r.status_code == 200
    task = r.json()
    assert task["task_id"] == "abc-123"
    assert task["status"] == "running" and task["strategy"] == "lora"
    assert task["metrics"] == {"learning_rate": 0.0001}
    assert task["config"]["max_steps"] == 10
    assert "model_path" not in task["config"]  # an unset `optional` field stays absent
    assert "success" not in task  # no envelope declared


def test_unknown_task_is_404_with_message(client):
    r = client.get("/api/train/status/missing")
    assert r.status_code == 404
    assert r.json()["code"] == "NOT_FOUND" and "missing" in r.json()["message"]


def test_enum_input_accepts_json_word_and_proto_name(client):
    for strategy in ("lora", "STRATEGY_LORA"):
        r = client.post("/api/train/start", json={"strategy": strategy, "dataset_path": "d", "output_dir": "o",
                                                  "config": {"learning_rate": 0.001, "max_steps": 3}})
        assert r.status_code == 200
        body = r.json()
        assert body["message"].startswith("STRATEGY_LORA lr=0.001 steps=3")
        assert body["status"] == "pending"


def test_unknown_enum_word_is_400_naming_the_field(client):
    r = client.post("/api/train/start", json={"strategy": "qlora", "dataset_path": "d", "output_dir": "o"})
    assert r.status_code == 400
    body = r.json()
    assert body["details"][0]["field"] == "strategy"
    assert "trl" in body["details"][0]["description"] and "lora" in body["details"][0]["description"]


def test_unknown_fields_are_ignored(client):
    r = client.post("/api/train/start", json={"strategy": "trl", "dataset_path": "d", "output_dir": "o",
                                              "not_a_field": {"deep": [1, 2]},
                                              "config": {"learning_rate": 0.5, "bogus": True}})
    assert r.status_code == 200
    assert r.json()["message"].startswith("STRATEGY_TRL lr=0.5")


@pytest.mark.parametrize("payload,field", [
    ({"config": {"learning_rate": "fast"}}, "config.learning_rate"),
    ({"config": {"max_steps": 1.5}}, "config.max_steps"),
    ({"config": {"max_steps": True}}, "config.max_steps"),
    ({"config": {"max_steps": 2**40}}, "config.max_steps"),
    ({"config": "big"}, "config"),
    ({"dataset_path": 12}, "dataset_path"),
    ({"config": {"lora_config": {"target_modules": "q_proj"}}}, "config.lora_config.target_modules"),
    ({"config": {"lora_config": {"target_modules": ["q_proj", 3]}}}, "config.lora_config.target_modules[1]"),
])
def test_wrong_type_is_400_naming_the_field(client, payload, field):
    r = client.post("/api/train/start", json={"strategy": "trl", **payload})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "INVALID_ARGUMENT"
    assert [d["field"] for d in body["details"]] == [field]
    assert field in body["message"]


def test_all_wrong_fields_are_reported_at_once(client):
    r = client.post("/api/train/start", json={"strategy": 5, "dataset_path": [], "config": {"seed": "x"}})
    assert r.status_code == 400
    assert {d["field"] for d in r.json()["details"]} == {"strategy", "dataset_path", "config.seed"}


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_or_non_object_body_is_400(client, raw):
    r = client.post("/api/train/start", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False and body["details"][0]["field"] == "body"


def test_body_over_the_limit_is_400_naming_the_limit(client):
    # base_config sets api.max_body_bytes to 4096.
    r = client.post("/api/train/start", json={"strategy": "trl", "dataset_path": "x" * 5000})
    assert r.status_code == 400
    assert "api.max_body_bytes" in r.json()["message"]
    # Without a content-length (chunked upload), the limit holds too.
    r = client.post("/api/train/start", content=iter([b'{"dataset_path": "', b"y" * 5000, b'"}']))
    assert r.status_code == 400
    assert "api.max_body_bytes" in r.json()["message"]


def test_empty_body_means_all_defaults(client):
    # Required fields (input_file, output_dir: `field_behavior` REQUIRED) are refused by name...
    r = client.post("/api/data/process", content=b"")
    assert r.status_code == 400
    assert [d["field"] for d in r.json()["details"]] == ["input_file", "output_dir"]
    # ...every other field gets its default.
    r = client.post("/api/data/process", json={"input_file": "in.jsonl", "output_dir": "out"})
    assert r.status_code == 200
    data = r.json()["data"]
    # The gateway sends an empty request; the documented default (format_type "auto") is applied
    # where the request enters the service, so even this fake servicer sees it. Sub-messages stay unset.
    assert data["detected_format"] == "auto" and data["train_samples"] == -1


def test_body_fields_nested_defaults_and_int64_as_numbers(client):
    r = client.post("/api/data/process", json={"input_file": "in.jsonl", "output_dir": "out",
                                               "format_type": "sharegpt", "overwrite": True,
                                               "split_config": {"seed": 7}})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["message"] == "Dataset processed"
    data = body["data"]
    assert data["output_dir"] == "out" and data["detected_format"] == "sharegpt"
    assert data["train_samples"] == 7 and data["total_samples"] == 1
    assert data["files"][0]["size_bytes"] == 2**40 + 1  # int64 as a JSON number, not a string
    assert isinstance(data["files"][0]["size_bytes"], int)
    assert data["dropped"] == {"invalid": 2}


def test_camel_case_json_names_are_accepted(client):
    r = client.post("/api/data/process", json={"inputFile": "in.jsonl", "outputDir": "o2", "formatType": "alpaca"})
    data = r.json()["data"]
    assert data["output_dir"] == "o2" and data["detected_format"] == "alpaca"


def test_path_wins_and_body_fills_the_rest(client):
    r = client.post("/api/train/resume/t-9", json={"task_id": "other", "checkpoint": "ckpt-5"})
    assert r.status_code == 200
    assert r.json()["task_id"] == "t-9" and r.json()["message"] == "resume from ckpt-5"
    r = client.post("/api/train/cancel/t-9")
    assert r.json()["status"] == "cancelled"


def test_request_id_is_passed_to_the_backend_and_echoed(client, fake_state):
    r = client.post("/api/data/validate", params={"file_path": "ok"}, headers={"X-Request-Id": "abc-123.4"})
    assert r.headers["x-request-id"] == "abc-123.4"
    assert r.json()["data"]["detected_format"] == "abc-123.4"  # the fake echoes the metadata
    r = client.post("/api/data/validate", params={"file_path": "ok"})
    generated = r.headers["x-request-id"]
    assert len(generated) >= 16 and r.json()["data"]["detected_format"] == generated
    # Error answers carry it too; a value unfit for gRPC metadata is replaced.
    r = client.get("/api/train/status/missing", headers={"X-Request-Id": "bad id\twith spaces"})
    assert r.status_code == 404 and r.headers["x-request-id"] and " " not in r.headers["x-request-id"]


def test_unknown_route_and_wrong_method_are_json(client):
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = client.get("/api/data/validate")
    assert r.status_code == 405 and r.json()["success"] is False and "POST" in r.headers["allow"]


def test_deadline_exceeded_is_504(base_config, fake_backend):
    cfg = all_at(base_config, fake_backend.port).with_overrides({"api.default_deadline_seconds": 0.3})
    with GatewayServer(cfg) as gw, httpx.Client(base_url=gw.url, timeout=10) as c:
        r = c.post("/api/data/validate", params={"file_path": "sleep:2"})
    assert r.status_code == 504 and r.json()["code"] == "DEADLINE_EXCEEDED"


def test_backend_down_is_503_naming_the_service(base_config, fake_backend):
    dead = free_port()
    cfg = all_at(base_config, fake_backend.port).with_overrides({"services.data.port": dead})
    with GatewayServer(cfg) as gw, httpx.Client(base_url=gw.url, timeout=20) as c:
        r = c.post("/api/data/validate", params={"file_path": "ok"})
        assert r.status_code == 503
        body = r.json()
        assert body["code"] == "UNAVAILABLE" and body["service"] == "data"
        assert f"127.0.0.1:{dead}" in body["message"] and "data" in body["message"]
        # The other backends still answer.
        assert c.get("/api/train/status/x").status_code == 200
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        assert health.json()["services"]["data"] != "SERVING"
        assert health.json()["services"]["train"] == "SERVING"


def test_health_all_serving_and_root(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "healthy"
    assert set(r.json()["services"]) == {"data", "train", "inference", "eval", "export"}
    root = client.get("/").json()
    assert root["message"] == "Win-Train API" and root["docs"] == "/docs" and root["status"] == "running"
    assert root["version"]


def test_health_reports_not_serving(base_config, fake_state):
    from tests.gateway.helpers import fake_register

    with InProcessServer(base_config, "data", fake_register(fake_state)) as backend:
        with GatewayServer(all_at(base_config, backend.port)) as gw, httpx.Client(base_url=gw.url, timeout=10) as c:
            assert c.get("/health").status_code == 200
            backend.call(backend.runtime.set_serving(False))
            r = c.get("/health")
            assert r.status_code == 503
            assert r.json()["services"] == {name: "NOT_SERVING" for name in ("data", "train", "inference", "eval", "export")}


def test_hooks_can_refuse_and_observe(base_config, fake_backend):
    from starlette.responses import JSONResponse

    from gateway.middleware import RequestHooks

    seen = []

    class Hooks(RequestHooks):
        async def authorize(self, scope, headers):
            if scope["path"].startswith("/api/") and headers.get("authorization") != "Bearer k":
                return JSONResponse({"success": False, "code": "UNAUTHENTICATED"}, status_code=401)
            return None

        def observe(self, method, route, status, seconds):
            seen.append((method, route, status))

    with GatewayServer(all_at(base_config, fake_backend.port), hooks=Hooks()) as gw, \
            httpx.Client(base_url=gw.url, timeout=10) as c:
        assert c.get("/api/train/status/a").status_code == 401
        r = c.get("/api/train/status/a", headers={"Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["x-request-id"]
    assert ("GET", "/api/train/status/{p0}", 200) in seen
    assert ("GET", "/api/train/status/a", 401) in seen


def test_raw_http_keep_alive_and_utf8(gateway):
    # The original answered Chinese text unescaped; check the raw bytes on one connection.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        body = json.dumps({"messages": [{"role": "user", "content": "你好"}]}, ensure_ascii=False).encode()
        for _ in range(2):
            s.sendall(b"POST /api/inference/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, rest = data.split(b"\r\n\r\n", 1)
            length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
            while len(rest) < length:
                rest += s.recv(65536)
            assert head.startswith(b"HTTP/1.1 200")
            assert "echo:你好".encode() in rest


def test_unknown_request_keys_are_ignored_but_named_in_a_header(client):
    """The original API ignored keys it did not know, so scripts keep working; the gateway still
    names them (with the nearest real field), so a typo does not silently fall back to a default."""
    r = client.post("/api/train/start", json={
        "strategy": "lora", "dataset_path": "d.jsonl", "output_dir": "out",
        "config": {"lerning_rate": 0.1, "max_steps": 5}, "colour": "blue"})
    assert r.status_code == 200
    assert r.headers["x-wintrain-ignored-fields"] == "config.lerning_rate (did you mean learning_rate?), colour"
    r = client.post("/api/data/validate", params={"file_path": "ok.jsonl", "file_pth": "x"})
    assert r.status_code == 200
    assert r.headers["x-wintrain-ignored-fields"] == "file_pth (did you mean file_path?)"
    # On an error answer too, and on a stream (SSE) answer.
    r = client.post("/api/data/validate", params={"file_path": "error:NOT_FOUND", "verbose": "1"})
    assert r.status_code == 404 and r.headers["x-wintrain-ignored-fields"] == "verbose"
    r = client.get("/api/train/watch/t-5", params={"replays": "true"})
    assert r.status_code == 200 and r.headers["x-wintrain-ignored-fields"] == "replays (did you mean replay?)"
    # Known keys only: no header.
    r = client.post("/api/data/validate", params={"file_path": "ok.jsonl"})
    assert "x-wintrain-ignored-fields" not in r.headers

"""Issue 15 item 16: the OpenAPI document declares what the server checks, from the same proto
options (`google.api.field_behavior` REQUIRED, `wintrain.api.v1.rules` bounds): a schema-driven
client and the server agree. Each declared bound is posted at its edge (just outside: 400 naming
the field; on it: not 400), and real responses and stream events validate against the schemas."""

from __future__ import annotations

import copy
import json

import pytest
from openapi_schema_validator import OAS30Validator

from services.common.proto_rules import violations
from wintrain.inference.v1 import inference_pb2
from tests.gateway.helpers import gateway_over
from tests.support import InProcessServer, make_config

FAKE_BACKED = ("/api/inference/", "/api/train/", "/api/data/")  # services the fake backend hosts


@pytest.fixture(scope="module")
def doc(client):
    return client.get("/openapi.json").json()


def _resolve(doc: dict, schema: dict) -> dict:
    while True:
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].split("/")[-1]]
        elif "allOf" in schema and len(schema["allOf"]) == 1:
            schema = schema["allOf"][0]
        elif "anyOf" in schema and any("$ref" in o for o in schema["anyOf"]):  # a nullable message
            schema = next(o for o in schema["anyOf"] if "$ref" in o)
        else:
            return schema


def _is_valid(doc: dict, schema: dict, instance) -> bool:
    return OAS30Validator({**schema, "components": doc["components"]}).is_valid(instance)


def _dummy(doc: dict, schema: dict):
    schema = _resolve(doc, schema)
    kind = schema.get("type")
    if kind == "array":
        return [_dummy(doc, schema["items"])]
    if kind == "object":
        return {name: _dummy(doc, sub) for name, sub in schema.get("properties", {}).items()
                if name in schema.get("required", [])} | ({"role": "user", "content": "x"}
                                                          if "role" in schema.get("properties", {}) else {})
    if kind == "integer":
        return max(1, schema.get("minimum", 1))
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return False
    return "x"


def _operations(doc: dict):
    """(method, path, where, name, schema) of every top-level request value that declares bounds."""
    for path, item in doc["paths"].items():
        if not path.startswith(FAKE_BACKED) or "{" in path:
            continue
        for method, op in item.items():
            if "requestBody" in op:
                body = _resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
                for name, sub in body.get("properties", {}).items():
                    yield method, path, "body", name, sub, body
            for param in op.get("parameters", []):
                if param["in"] == "query" and "." not in param["name"]:
                    yield method, path, "query", param["name"], param["schema"], None


def _edges(schema: dict):
    """(value, valid) pairs at the declared bounds of a number schema."""
    target = schema["items"] if schema.get("type") == "array" else schema
    kind = target.get("type")
    if kind not in ("integer", "number"):
        return []
    step = 1 if kind == "integer" else 0.5
    wrap = (lambda v: [v]) if schema.get("type") == "array" else (lambda v: v)
    out = []
    if "minimum" in target:
        low = target["minimum"]
        if target.get("exclusiveMinimum"):
            out += [(low, False), (low + step if "maximum" not in target else min(low + step, target["maximum"]), True)]
        else:
            out += [(low - step, False), (low, True)]
    if "maximum" in target:
        high = target["maximum"]
        if target.get("exclusiveMaximum"):
            out += [(high, False)]
        else:
            out += [(high + step, False), (high, True)]
    return [(wrap(v), ok) for v, ok in out]


def test_document_declares_required_and_bounds(doc):
    schemas = doc["components"]["schemas"]
    chat = schemas["wintrain.inference.v1.ChatRequest"]
    assert chat["required"] == ["messages"] and chat["properties"]["messages"]["minItems"] == 1
    assert chat["properties"]["top_p"] == {**chat["properties"]["top_p"], "minimum": 0, "exclusiveMinimum": True,
                                           "maximum": 1}
    assert chat["properties"]["max_tokens"]["minimum"] == 1 and chat["properties"]["seed"]["nullable"] is True
    page_size = next(p for p in doc["paths"]["/api/inference/models"]["get"]["parameters"] if p["name"] == "page_size")
    assert page_size["schema"]["minimum"] == 0
    assert not _is_valid(doc, page_size["schema"], -2147483648) and _is_valid(doc, page_size["schema"], 0)
    validate = next(p for p in doc["paths"]["/api/data/validate"]["post"]["parameters"] if p["name"] == "file_path")
    assert validate["required"] is True and validate["schema"]["minLength"] == 1
    assert schemas["wintrain.data.v1.ProcessDatasetRequest"]["required"] == ["input_file", "output_dir"]
    assert "dataset_path" in schemas["wintrain.train.v1.StartTrainingRequest"]["required"]
    # A path-bound required field is not required again in the body.
    resume_body = doc["paths"]["/api/train/resume/{task_id}"]["post"]["requestBody"]["content"]["application/json"]
    assert "required" not in _resolve(doc, resume_body["schema"])
    # LoadModel: null and empty are documented as the default model (schema says so).
    load = schemas["wintrain.inference.v1.LoadModelRequest"]["properties"]["model_path"]
    assert load["nullable"] is True and "null" in load["description"]
    assert _is_valid(doc, schemas["wintrain.inference.v1.LoadModelRequest"], {"model_path": None})


def test_stream_event_schemas_are_the_message_objects(doc):
    for path, method in (("/api/inference/chat/stream", "post"), ("/api/train/watch/{task_id}", "get"),
                         ("/v1/chat/completions", "post")):
        schema = doc["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert schema.get("type") != "string", path
        assert not _is_valid(doc, schema, "a string"), path  # events are JSON objects
        assert _is_valid(doc, schema, {}) or path.startswith("/v1"), path


def test_every_declared_bound_is_what_the_server_checks(doc, client):
    tried = 0
    for method, path, where, name, schema, body_schema in _operations(doc):
        for value, valid in _edges(schema):
            if where == "body":
                body = {k: _dummy(doc, body_schema["properties"][k]) for k in body_schema.get("required", [])}
                body[name] = value
                r = client.request(method, path, json=body)
            else:
                params = {p["name"]: _dummy(doc, p["schema"]) for p in doc["paths"][path][method]["parameters"]
                          if p.get("required")}
                params[name] = value
                r = client.request(method, path, params=params)
            tried += 1
            shown = f"{method.upper()} {path} {name}={value!r}: {r.status_code} {r.text[:300]}"
            if valid:
                assert r.status_code != 400, shown
            else:
                assert r.status_code == 400, shown
                assert name in {d["field"].split("[")[0].split(".")[0] for d in r.json()["details"]}, shown
    assert tried >= 40, tried


@pytest.mark.parametrize("method,path,body,field", [
    ("post", "/api/inference/chat", {}, "messages"),
    ("post", "/api/inference/batch", {"prompts": []}, "prompts"),
    ("post", "/api/data/process", {"input_file": "a.jsonl"}, "output_dir"),
    ("post", "/api/train/start", {"strategy": "lora", "output_dir": "o"}, "dataset_path"),
])
def test_required_fields_are_refused_naming_them(client, method, path, body, field):
    r = client.request(method, path, json=body)
    assert r.status_code == 400 and field in [d["field"] for d in r.json()["details"]], r.text


def test_null_is_read_as_unset(client, doc):
    r = client.post("/api/inference/chat", json={"messages": None})
    assert r.status_code == 400 and r.json()["details"][0]["field"] == "messages"
    # A message field that is not required may be null, in the schema as on the server.
    body = {"input_file": "in.jsonl", "output_dir": "out", "split_config": None, "format_type": None}
    assert _is_valid(doc, doc["components"]["schemas"]["wintrain.data.v1.ProcessDatasetRequest"], body)
    assert not _is_valid(doc, doc["components"]["schemas"]["wintrain.data.v1.ProcessDatasetRequest"],
                         {**body, "input_file": None})
    assert client.post("/api/data/process", json=body).status_code == 200
    chunk = doc["components"]["schemas"]["ChatCompletionChunk"]
    assert _is_valid(doc, chunk, {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                  "choices": [], "usage": None})


def test_responses_and_events_validate_against_their_schemas(doc, client):
    op = doc["paths"]["/api/inference/models"]["get"]
    r = client.get("/api/inference/models")
    assert r.status_code == 200 and _is_valid(doc, op["responses"]["200"]["content"]["application/json"]["schema"], r.json())
    event_schema = doc["paths"]["/api/inference/chat/stream"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    r = client.post("/api/inference/chat/stream", json={"messages": [{"role": "user", "content": "hi"}]})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert events and all(_is_valid(doc, event_schema, e) for e in events), events
    bad = copy.deepcopy(events[0])
    bad["token"] = 5
    assert not _is_valid(doc, event_schema, bad)
    chunk_schema = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert chunks and all(_is_valid(doc, chunk_schema, c) for c in chunks), chunks


def test_rules_checked_on_grpc_too():
    assert violations(inference_pb2.ListModelsRequest(page_size=-2147483648)) == [("page_size", "must be >= 0")]
    assert violations(inference_pb2.ChatRequest(top_p=0.0)) == [("messages", "must not be empty"),
                                                                ("top_p", "must be in (0, 1]")]


def test_eval_and_export_refuse_missing_required_fields(tmp_path):
    from services.eval.server import register as eval_register
    from services.export.server import register as export_register

    config = make_config(tmp_path / "ws", tmp_path / "no-model")
    with InProcessServer(config, "eval", eval_register) as ev, InProcessServer(config, "export", export_register) as ex, \
            gateway_over(config, {"eval": ev, "export": ex}) as gw:
        import httpx

        r = httpx.post(f"{gw.url}/api/eval/evaluate", json={"model_path": "m"})
        assert r.status_code == 400 and [d["field"] for d in r.json()["details"]] == ["dataset_path"], r.text
        r = httpx.post(f"{gw.url}/api/export/onnx", json={"model_path": "m", "output_path": None})
        assert r.status_code == 400 and [d["field"] for d in r.json()["details"]] == ["output_path"], r.text


def test_every_get_answer_validates_against_its_schema(doc, client):
    checked = 0
    for path, item in doc["paths"].items():
        op = item.get("get")
        if op is None or "{" in path or not path.startswith(("/api/", "/v1/")):
            continue
        ok = op["responses"]["200"]["content"]
        if "application/json" not in ok:
            continue
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert _is_valid(doc, ok["application/json"]["schema"], r.json()), (path, r.json())
        checked += 1
    r = client.get("/v1/models/default")
    assert _is_valid(doc, doc["paths"]["/v1/models/{model_id}"]["get"]["responses"]["200"]["content"]
                     ["application/json"]["schema"], r.json())
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and _is_valid(doc, doc["components"]["schemas"]["ErrorResponse"], r.json())
    assert checked >= 3, checked

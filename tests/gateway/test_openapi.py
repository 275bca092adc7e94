"""`/openapi.json` is generated from the descriptors and valid OpenAPI 3; `/docs` works offline."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from gateway.routes import discover_routes


@pytest.fixture(scope="module")
def doc(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return r.json()


def test_document_is_valid_openapi(doc):
    validate(doc)
    assert doc["openapi"].startswith("3.")


def test_every_annotated_rpc_is_documented(doc):
    for spec in discover_routes():
        path = re.sub(r"\{([^{}=]+)(?:=[^{}]+)?\}", r"{\1}", spec.template)
        op = doc["paths"][path][spec.http_method.lower()]
        assert op["x-grpc-method"] == spec.grpc_path
    for path in ("/health", "/", "/v1/chat/completions", "/v1/models"):
        assert path in doc["paths"]


def test_parameters_bodies_and_defaults(doc):
    validate_op = doc["paths"]["/api/data/validate"]["post"]
    assert [p["name"] for p in validate_op["parameters"]] == ["file_path"]
    assert validate_op["parameters"][0]["in"] == "query" and "requestBody" not in validate_op
    status_op = doc["paths"]["/api/train/status/{task_id}"]["get"]
    assert status_op["parameters"][0] == {**status_op["parameters"][0], "name": "task_id", "in": "path", "required": True}
    schemas = doc["components"]["schemas"]
    chat = schemas["wintrain.inference.v1.ChatRequest"]["properties"]
    assert chat["max_tokens"]["default"] == 512 and chat["temperature"]["default"] == 0.7
    assert chat["seed"]["type"] == "integer" and chat["seed"]["format"] == "int64"
    lora = schemas["wintrain.train.v1.LoraConfig"]["properties"]
    assert lora["target_modules"]["default"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert {"pending", "running", "completed", "failed", "cancelled"} <= set(schemas["wintrain.train.v1.TaskStatus"]["enum"])
    # A body route with a path variable documents a body without it.
    resume = doc["paths"]["/api/train/resume/{task_id}"]["post"]
    body_ref = resume["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert "task_id" not in schemas[body_ref]["properties"] and "checkpoint" in schemas[body_ref]["properties"]


def test_field_comments_become_descriptions(doc):
    props = doc["components"]["schemas"]["wintrain.data.v1.ValidateDatasetResponse"]["properties"]
    assert "every row is valid" in props["is_valid"]["description"]
    assert "Checks every row" in doc["paths"]["/api/data/validate"]["post"]["description"]


def test_envelope_and_streams_are_described(doc):
    validate_schema = doc["paths"]["/api/data/validate"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(validate_schema["required"]) == {"success", "message", "data", "timestamp"}
    assert validate_schema["properties"]["data"]["$ref"].endswith("ValidateDatasetResponse")
    tasks = doc["paths"]["/api/train/tasks"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert tasks["properties"]["data"]["type"] == "array" and "next_page_token" in tasks["properties"]
    status = doc["paths"]["/api/train/status/{task_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert status["schema"]["$ref"].endswith("TrainingTask")  # no envelope declared
    stream = doc["paths"]["/api/inference/chat/stream"]["post"]["responses"]["200"]
    assert list(stream["content"]) == ["text/event-stream"] and "[DONE]" in stream["description"]


def test_docs_page_is_served_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/openapi.json" in page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and all(u.startswith("/docs/static/") for u in urls), urls  # no CDN
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert "SwaggerUIBundle" in client.get("/docs/static/swagger-ui-bundle.js").text

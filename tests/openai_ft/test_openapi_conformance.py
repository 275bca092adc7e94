"""/v1/files and /v1/fine_tuning/jobs as /openapi.json declares them: the document is valid
OpenAPI, and what the real gateway (over a real train service) answers on each route validates
against the schema declared for that route and status; request bodies the schema refuses the
server refuses too, naming the field."""

from __future__ import annotations

import time

import httpx
import pytest
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

from tests.openai_ft.conftest import CHAT_ROWS, jsonl

FT_PATHS = ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/fine_tuning/jobs",
            "/v1/fine_tuning/jobs/{job_id}", "/v1/fine_tuning/jobs/{job_id}/cancel",
            "/v1/fine_tuning/jobs/{job_id}/pause", "/v1/fine_tuning/jobs/{job_id}/resume",
            "/v1/fine_tuning/jobs/{job_id}/events", "/v1/fine_tuning/jobs/{job_id}/checkpoints")


@pytest.fixture(scope="module")
def doc(stack):
    reply = httpx.get(f"{stack[0].url}/openapi.json")
    assert reply.status_code == 200
    return reply.json()


def schema_validator(doc: dict, schema: dict) -> OAS30Validator:
    # The components travel beside the schema so that its `#/components/...` refs resolve.
    return OAS30Validator({**schema, "components": doc["components"]})


def check(doc: dict, path: str, method: str, reply: httpx.Response) -> dict:
    """The reply's JSON, validated against the schema of (path, method, status)."""
    responses = doc["paths"][path][method]["responses"]
    declared = responses.get(str(reply.status_code), responses["default"])
    schema = declared["content"]["application/json"]["schema"]
    body = reply.json()
    schema_validator(doc, schema).validate(body)
    return body


def test_the_document_is_valid_and_declares_every_route(doc):
    validate_spec(doc)
    for path in FT_PATHS:
        assert path in doc["paths"], path
    create = doc["components"]["schemas"]["FineTuningJobCreateRequest"]
    assert create["required"] == ["model", "training_file"] and create["additionalProperties"] is False
    assert create["properties"]["metadata"]["maxProperties"] == 16
    assert create["properties"]["suffix"]["maxLength"] == 64
    params = {p["name"]: p for p in doc["paths"]["/v1/fine_tuning/jobs"]["get"]["parameters"]}
    assert set(params) == {"after", "limit", "metadata"} and params["limit"]["schema"]["maximum"] == 100
    assert params["metadata"]["style"] == "deepObject"
    upload = doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["$ref"].endswith("/FileUploadRequest")


def test_real_responses_validate_against_their_declared_schemas(stack, doc):
    gw = stack[0]
    url = gw.url
    with httpx.Client(base_url=url, timeout=120) as http:
        uploaded = check(doc, "/v1/files", "post", http.post(
            "/v1/files", files={"file": ("chat.jsonl", jsonl(CHAT_ROWS))}, data={"purpose": "fine-tune"}))
        other = check(doc, "/v1/files", "post", http.post(
            "/v1/files", files={"file": ("n.txt", b"text")}, data={"purpose": "user_data"}))
        listed = check(doc, "/v1/files", "get", http.get("/v1/files", params={"limit": 5, "order": "asc"}))
        assert [f["id"] for f in listed["data"]][-2:] == [uploaded["id"], other["id"]]
        check(doc, "/v1/files/{file_id}", "get", http.get(f"/v1/files/{uploaded['id']}"))
        assert check(doc, "/v1/files/{file_id}", "delete", http.delete(f"/v1/files/{other['id']}"))["deleted"]
        missing = http.get(f"/v1/files/{other['id']}")
        assert missing.status_code == 404
        assert check(doc, "/v1/files/{file_id}", "get", missing)["error"]["param"] == "file_id"
        refused = http.post("/v1/files", files={"file": ("x.jsonl", b"not json\n")}, data={"purpose": "fine-tune"})
        assert refused.status_code == 400 and check(doc, "/v1/files", "post", refused)["error"]["param"] == "file"

        # A job that fails validation (at once), and a real one, cancelled while queued or running.
        bad = check(doc, "/v1/files", "post", http.post("/v1/files", files={"file": ("bad.jsonl", jsonl(
            [{"messages": [{"role": "user", "content": "a question alone"}]}]))}, data={"purpose": "fine-tune"}))
        failed = check(doc, "/v1/fine_tuning/jobs", "post", http.post("/v1/fine_tuning/jobs", json={
            "model": "default", "training_file": bad["id"], "suffix": "bad", "metadata": {"case": "schema"}}))
        assert failed["status"] == "validating_files" and failed["error"] is None
        jobs = "/v1/fine_tuning/jobs"

        def settle(job_id: str) -> dict:
            deadline = time.monotonic() + 60
            while True:
                body = check(doc, jobs + "/{job_id}", "get", http.get(f"{jobs}/{job_id}"))
                if body["status"] != "validating_files" or time.monotonic() > deadline:
                    return body
                time.sleep(0.1)

        failed = settle(failed["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_training_file"
        job = check(doc, "/v1/fine_tuning/jobs", "post", http.post("/v1/fine_tuning/jobs", json={
            "model": "default", "training_file": uploaded["id"], "seed": 7,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
            "wintrain": {"max_steps": 2}}))
        assert job["status"] == "validating_files"
        job = settle(job["id"])
        assert job["status"] in ("queued", "running") and job["wintrain"]["task_id"]
        cancelled = http.post(f"{jobs}/{job['id']}/cancel")
        assert cancelled.status_code in (200, 409)  # 409 only if it finished first
        check(doc, jobs + "/{job_id}/cancel", "post", cancelled)
        for path, job_id in ((jobs + "/{job_id}", job["id"]), (jobs + "/{job_id}", failed["id"])):
            check(doc, path, "get", http.get(f"{jobs}/{job_id}"))
        page = check(doc, jobs, "get", http.get(jobs, params={"limit": 1}))
        assert page["has_more"] is True and len(page["data"]) == 1
        only = check(doc, jobs, "get", http.get(jobs, params={"metadata[case]": "schema"}))
        assert [j["id"] for j in only["data"]] == [failed["id"]]
        for job_id in (job["id"], failed["id"]):
            events = check(doc, jobs + "/{job_id}/events", "get", http.get(f"{jobs}/{job_id}/events"))
            assert events["data"], job_id
            check(doc, jobs + "/{job_id}/checkpoints", "get", http.get(f"{jobs}/{job_id}/checkpoints"))
        for verb in ("pause", "resume", "cancel"):
            conflict = http.post(f"{jobs}/{failed['id']}/{verb}")
            assert conflict.status_code == 409
            assert check(doc, jobs + "/{job_id}/" + verb, "post", conflict)["error"]["param"] == "fine_tuning_job_id"
        gone = http.get(f"{jobs}/ftjob-0000/events")
        assert gone.status_code == 404 and check(doc, jobs + "/{job_id}/events", "get", gone)

        # Each list's declared `limit` bounds are the server's.
        for path, real in (("/v1/files", "/v1/files"), (jobs, jobs),
                           (jobs + "/{job_id}/events", f"{jobs}/{job['id']}/events"),
                           (jobs + "/{job_id}/checkpoints", f"{jobs}/{job['id']}/checkpoints")):
            limit = next(p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "limit")["schema"]
            check(doc, path, "get", http.get(real, params={"limit": limit["maximum"]}))
            for wrong in (limit["minimum"] - 1, limit["maximum"] + 1):
                reply = http.get(real, params={"limit": wrong})
                assert reply.status_code == 400 and check(doc, path, "get", reply)["error"]["param"] == "limit"

        # The check can fail: a job object without its status is not a FineTuningJob.
        schema = doc["paths"][jobs + "/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        with pytest.raises(ValidationError):
            schema_validator(doc, schema).validate({k: v for k, v in failed.items() if k != "status"})

        # What the declared request schema refuses, the server refuses, naming the same field.
        body_schema = {"$ref": "#/components/schemas/FineTuningJobCreateRequest"}
        base = {"model": "default", "training_file": uploaded["id"]}
        for body, param in (({**base, "suffix": "x" * 65}, "suffix"), ({**base, "seed": -1}, "seed"),
                            ({**base, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
                            ({**base, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
                            ({**base, "method": {"type": "supervised", "supervised": {
                                "hyperparameters": {"learning_rate_multiplier": 0}}}},
                             "method.supervised.hyperparameters.learning_rate_multiplier"),
                            ({**base, "method": {"type": "reinforcement"}}, "method.type"),
                            ({**base, "wintrain": {"strategy": "qlora"}}, "wintrain.strategy"),
                            ({**base, "unknown_field": 1}, "unknown_field"),
                            ({"training_file": uploaded["id"]}, "model")):
            assert not schema_validator(doc, body_schema).is_valid(body), body
            reply = http.post(jobs, json=body)
            assert reply.status_code == 400, (body, reply.text)
            assert check(doc, jobs, "post", reply)["error"]["param"] == param, (body, reply.text)

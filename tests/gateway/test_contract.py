"""Every row of HTTP_API.md, through the gateway, against the REAL services (in-process
gRPC servers on free ports, the tiny model, a temporary workspace): method, path and the
documented response shape.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.gateway.helpers import gateway_over
from tests.support import all_services, make_config

ASSETS = Path(__file__).resolve().parents[2] / "services" / "common" / "assets" / "datasets"
TASK_FIELDS = {"task_id", "status", "strategy", "dataset_path", "output_dir", "config", "created_at", "started_at",
               "completed_at", "error_message", "progress", "current_step", "total_steps", "metrics"}
STATUS_WORDS = {"pending", "running", "completed", "failed", "cancelled", "interrupted"}


@dataclass
class Stack:
    url: str
    workspace: Path
    model: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    ws = tmp_path_factory.mktemp("contract") / "ws"
    config = make_config(ws, tiny_model_dir, **{"inference.max_concurrent": 1, "train.max_concurrent": 1})
    (ws / "data").mkdir()
    shutil.copy(ASSETS / "train_sample.jsonl", ws / "data" / "train_sample.jsonl")
    model = ws / "models" / "tiny-chat"
    shutil.copytree(tiny_model_dir, model)
    with all_services(config) as servers, gateway_over(config, servers) as gw:
        yield Stack(gw.url, ws, model)


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, timeout=300) as c:
        yield c


def _envelope(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"success", "message", "data", "timestamp"}
    assert isinstance(body["success"], bool) and isinstance(body["message"], str)
    assert isinstance(body["timestamp"], str) and "T" in body["timestamp"]
    return body


# ---------------------------------------------------------------------------- gateway rows
def test_get_health(stack, http):
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "healthy"


def test_get_root(http):
    body = http.get("/").json()
    assert set(body) == {"message", "version", "docs", "status"}
    assert body["docs"] == "/docs" and body["status"] == "running"


def test_get_docs(http):
    r = http.get("/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text


# ---------------------------------------------------------------------------- data
def test_post_data_validate(stack, http):
    body = _envelope(http.post("/api/data/validate", params={"file_path": "data/train_sample.jsonl"}))
    data = body["data"]
    assert set(data) >= {"is_valid", "total_samples", "valid_samples", "invalid_samples", "error_messages"}
    assert data["is_valid"] is True and body["success"] is True
    assert data["total_samples"] == 5 and data["valid_samples"] == 5 and data["invalid_samples"] == 0
    assert data["error_messages"] == []

    bad = stack.workspace / "data" / "bad.jsonl"
    bad.write_text('{"conversations": [{"role": "bot", "content": "x"}]}\n', encoding="utf-8")
    body = _envelope(http.post("/api/data/validate", params={"file_path": str(bad)}))
    assert body["success"] is False and body["data"]["is_valid"] is False and body["data"]["error_messages"]

    assert http.post("/api/data/validate", params={"file_path": "data/nope.jsonl"}).status_code == 404
    assert http.post("/api/data/validate", params={"file_path": "/etc/passwd"}).status_code == 403


def test_post_data_process(stack, http):
    body = _envelope(http.post("/api/data/process", json={
        "input_file": "data/train_sample.jsonl", "output_dir": "data/split",
        "split_config": {"train_ratio": 0.6, "val_ratio": 0.2, "test_ratio": 0.2}}))
    assert body["success"] is True
    assert "output_dir" in body["data"]
    for name in ("train.json", "val.json", "test.json"):
        assert (stack.workspace / "data" / "split" / name).is_file()
    rows = [json.loads(line) for line in (stack.workspace / "data" / "split" / "train.json").read_text("utf-8").splitlines()]
    assert rows and all("conversations" in row for row in rows)

    _envelope(http.post("/api/data/process", json={"input_file": "data/train_sample.jsonl", "output_dir": "data/one"}))
    assert (stack.workspace / "data" / "one" / "processed.json").is_file()


# ---------------------------------------------------------------------------- train
def test_train_start_status_tasks(stack, http):
    r = http.post("/api/train/start", json={
        "strategy": "lora", "dataset_path": "data/train_sample.jsonl", "output_dir": "models/contract-lora",
        "config": {"model_path": str(stack.model), "max_steps": 1, "per_device_train_batch_size": 1,
                   "gradient_accumulation_steps": 1, "logging_steps": 1, "max_length": 64,
                   "lora_config": {"r": 2, "target_modules": ["q_proj"]}}})
    assert r.status_code == 200, r.text
    started = r.json()
    assert set(started) >= {"task_id", "status", "message", "created_at"}
    assert started["status"] == "pending"
    task_id = started["task_id"]
    try:
        status = http.get(f"/api/train/status/{task_id}")
        assert status.status_code == 200, status.text
        task = status.json()
        assert set(task) >= {"task_id", "status", "progress", "current_step", "total_steps", "loss", "metrics"}
        assert task["task_id"] == task_id and task["status"] in STATUS_WORDS
        assert 0 <= task["progress"] <= 100 and isinstance(task["metrics"], dict)

        body = _envelope(http.get("/api/train/tasks"))
        assert isinstance(body["data"], list)
        listed = [t for t in body["data"] if t["task_id"] == task_id]
        assert listed and set(listed[0]) >= TASK_FIELDS and listed[0]["strategy"] == "lora"
        assert http.get("/api/train/status/no-such-task").status_code == 404
    finally:
        http.post(f"/api/train/cancel/{task_id}")  # spare the CPU; 400 once it has ended


# ---------------------------------------------------------------------------- inference
def test_post_inference_chat(stack, http):
    for extra in ({}, {"model_path": str(stack.model)}):
        r = http.post("/api/inference/chat", json={"messages": [{"role": "user", "content": "你好"}],
                                                   "max_tokens": 8, "temperature": 0, **extra})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) >= {"content", "thinking_content", "finish_reason"}
        assert isinstance(body["content"], str) and body["finish_reason"] in ("stop", "length")
    r = http.post("/api/inference/chat", json={"messages": [{"role": "user", "content": "x"}],
                                               "model_path": "models/absent"})
    assert r.status_code == 404


def test_post_inference_chat_stream(stack, http):
    r = http.post("/api/inference/chat/stream", json={"messages": [{"role": "user", "content": "你好"}],
                                                      "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = r.text.split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == "data: [DONE]"
    events = [json.loads(b[len("data: "):]) for b in blocks[:-2]]
    assert events and all("token" in e and "error" not in e for e in events)
    assert all(e["token"] for e in events[:-1])


def test_post_inference_batch(stack, http):
    body = _envelope(http.post("/api/inference/batch", json={"prompts": ["你好", "hello"], "max_tokens": 4,
                                                             "temperature": 0}))
    assert body["success"] is True
    results = body["data"]["results"]
    assert isinstance(results, list) and len(results) == 2 and all(isinstance(x, str) for x in results)


def test_openai_sdk_against_real_inference(stack):
    import openai

    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=300)
    reply = sdk.chat.completions.create(model="default", messages=[{"role": "user", "content": "你好"}],
                                        max_tokens=6, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage.completion_tokens <= 6 and reply.usage.prompt_tokens > 0
    chunks = list(sdk.chat.completions.create(model=str(stack.model), messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=6, temperature=0, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["stop"], ["length"])
    assert "default" in [m.id for m in sdk.models.list()]


# ---------------------------------------------------------------------------- eval, export
def test_post_eval_evaluate(stack, http):
    body = _envelope(http.post("/api/eval/evaluate", json={
        "model_path": str(stack.model), "dataset_path": "data/train_sample.jsonl", "batch_size": 2}))
    data = body["data"]
    assert set(data) >= {"metrics", "total_samples", "eval_time"}
    assert {"accuracy", "loss"} <= set(data["metrics"])  # the documented default metrics
    assert all(isinstance(v, (int, float)) for v in data["metrics"].values())
    assert data["total_samples"] == 5 and data["eval_time"] >= 0


@pytest.mark.slow
def test_post_export_onnx(stack, http):
    r = http.post("/api/export/onnx", json={"model_path": str(stack.model), "output_path": "exports/tiny"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"success", "message", "export_path", "file_size"}
    assert body["success"] is True and isinstance(body["file_size"], int) and body["file_size"] > 0
    export_path = Path(body["export_path"])
    assert (export_path if export_path.is_absolute() else stack.workspace / export_path).exists(), body


@pytest.mark.slow
def test_evalscope_openai_api_mode_against_the_gateway(stack, tmp_path):
    """evalscope's `openai_api` evaluation mode, pointed at the gateway's /v1, with the real
    InferenceService answering (the same path EvalService uses with eval.openai_base_url)."""
    pytest.importorskip("evalscope")
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # evalscope reconfigures logging on import
    try:
        from evalscope.config import TaskConfig
        from evalscope.run import run_task

        data = tmp_path / "qa"
        data.mkdir()
        rows = [{"messages": [{"role": "user", "content": "你好"}], "answer": "你好"},
                {"messages": [{"role": "user", "content": "hello"}], "answer": "hello"}]
        (data / "gw.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        run_task(TaskConfig(
            model="default", eval_type="openai_api", api_url=f"{stack.url}/v1", api_key="x",
            datasets=["general_qa"],
            dataset_args={"general_qa": {"local_path": str(data), "subset_list": ["gw"], "metric_list": ["Rouge"]}},
            generation_config={"max_tokens": 4, "temperature": 0.0, "retries": 1, "retry_interval": 1},
            eval_batch_size=1, work_dir=str(tmp_path / "out"), no_timestamp=True,
        ))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    reviews = sorted((tmp_path / "out" / "reviews").rglob("general_qa_gw.jsonl"))
    assert reviews, list((tmp_path / "out").rglob("*"))
    samples = [json.loads(line) for path in reviews for line in path.read_text("utf-8").splitlines() if line.strip()]
    assert len(samples) == 2
    assert all(isinstance(s["sample_score"]["score"]["prediction"], str) for s in samples)

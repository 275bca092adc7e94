"""`validating_files` (issue 19): POST /v1/fine_tuning/jobs answers at once, the data
service's ValidateDataset reads the files in the background, then the task starts.

The data service here is the real DataServicer behind a gate (its ValidateDataset waits
until the test opens the gate), so the test sees the job while it validates: GET shows
`validating_files`, cancel then cancels it and no task is ever started, and a gateway
restarted during validation takes the job up again (it is validated and started)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest

from services.data.server import DataServicer
from services.train.server import register as register_train
from tests.gateway.helpers import gateway_over
from tests.openai_ft.conftest import CHAT_ROWS, jsonl, settled
from tests.support import InProcessServer, make_config
from tests.train.conftest import train_overrides
from wintrain.data.v1 import data_pb2, data_pb2_grpc

GATE = threading.Event()
SEEN: list[str] = []


class GatedData(DataServicer):
    async def ValidateDataset(self, request, context):
        SEEN.append(request.file_path)
        await asyncio.to_thread(GATE.wait, 60)
        return await super().ValidateDataset(request, context)


def register_gated_data(runtime) -> list[str]:
    servicer = GatedData(runtime.config)
    data_pb2_grpc.add_DataServiceServicer_to_server(servicer, runtime.server)
    runtime.on_shutdown(servicer.limiter.shutdown)
    return [data_pb2.DESCRIPTOR.services_by_name["DataService"].full_name]


@pytest.fixture(scope="module")
def backends(tmp_path_factory, tiny_model_dir):
    ws = tmp_path_factory.mktemp("openai-ft-validating") / "ws"
    config = make_config(ws, tiny_model_dir, **train_overrides(**{"train.max_concurrent": 1}))
    try:
        with InProcessServer(config, "train", register_train) as train, \
                InProcessServer(config, "data", register_gated_data) as data:
            yield config, ws, {"train": train, "data": data}
    finally:
        GATE.set()


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0, timeout=60)


def task_ids(gw) -> set[str]:
    return {t["task_id"] for t in httpx.get(f"{gw.url}/api/train/tasks", timeout=30).json()["data"]}


def on_disk(ws, job_id: str) -> dict:
    return json.loads((ws / "openai" / "jobs" / f"{job_id}.json").read_text())


def test_validating_files_cancel_and_restart(backends):
    config, ws, servers = backends
    GATE.clear()
    with gateway_over(config, servers) as gw:
        sdk = client(gw)
        upload = sdk.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
        before = task_ids(gw)
        # Answered at once, while the data service has not answered yet.
        job = sdk.fine_tuning.jobs.create(model="default", training_file=upload.id, extra_body={
            "wintrain": {"max_steps": 2, "save_steps": 1000}})
        assert job.status == "validating_files" and job.error is None and job.id.startswith("ftjob-")
        assert job.model_extra["wintrain"]["task_id"] is None
        deadline = time.monotonic() + 30
        while not SEEN and time.monotonic() < deadline:
            time.sleep(0.05)
        # The training copy is validated (OpenAI `messages` rows as uploaded are its source).
        assert SEEN and SEEN[-1].endswith(f"{upload.id}.train.jsonl"), SEEN
        assert sdk.fine_tuning.jobs.retrieve(job.id).status == "validating_files"
        assert on_disk(ws, job.id)["status"] == "validating_files"
        with pytest.raises(openai.ConflictError) as exc:
            sdk.fine_tuning.jobs.pause(job.id)
        assert exc.value.param == "fine_tuning_job_id"
        # Cancel during validation: cancelled, and no task is ever started.
        cancelled = sdk.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        assert on_disk(ws, job.id)["status"] == "cancelled"
        with pytest.raises(openai.ConflictError):
            sdk.fine_tuning.jobs.cancel(job.id)
        # A second job, left validating when the gateway stops.
        pending = sdk.fine_tuning.jobs.create(model="default", training_file=upload.id, extra_body={
            "wintrain": {"max_steps": 2, "save_steps": 1000}})
        assert pending.status == "validating_files"
    assert on_disk(ws, pending.id)["status"] == "validating_files"
    GATE.set()
    with gateway_over(config, servers) as gw:
        sdk = client(gw)
        # The restarted gateway validated the job again and started it.
        job = settled(sdk, pending.id)
        assert job.status in ("queued", "running", "succeeded"), (job.status, job.error)
        task_id = job.model_extra["wintrain"]["task_id"]
        assert task_id and on_disk(ws, pending.id)["task_id"] == task_id
        assert httpx.get(f"{gw.url}/api/train/status/{task_id}", timeout=30).json()["task_id"] == task_id
        time.sleep(0.5)
        assert sdk.fine_tuning.jobs.retrieve(cancelled.id).status == "cancelled"
        assert task_ids(gw) - before == {task_id}  # the cancelled job never got a task
        if job.status != "succeeded":
            sdk.fine_tuning.jobs.cancel(pending.id)


def test_invalid_validation_file_names_its_line(backends):
    config, ws, servers = backends
    GATE.set()
    with gateway_over(config, servers) as gw:
        sdk = client(gw)
        train = sdk.files.create(file=("t.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
        rows = CHAT_ROWS[:2] + [{"messages": [{"role": "user", "content": "hi"},
                                              {"role": "robot", "content": "beep"}]}]
        valid = sdk.files.create(file=("v.jsonl", jsonl(rows)), purpose="fine-tune")
        job = sdk.fine_tuning.jobs.create(model="default", training_file=train.id, validation_file=valid.id)
        assert job.status == "validating_files"
        job = settled(sdk, job.id)
        assert job.status == "failed" and job.model_extra["wintrain"]["task_id"] is None
        assert job.error.code == "invalid_validation_file" and job.error.param == "validation_file", job.error
        assert "line 3" in job.error.message and valid.id in job.error.message, job.error.message
        assert any(p.endswith(f"{valid.id}.train.jsonl") for p in SEEN), SEEN  # the data service read it
        assert "messages" in job.error.message and "conversations" not in job.error.message, job.error.message

"""A real train service (in-process gRPC on a free port, real workers) and, for chat, a real
inference service, behind a real gateway; the official `openai` SDK as the client."""

from __future__ import annotations

import json
import time

import openai
import pytest

from services.data.server import register as register_data
from services.inference.server import register as register_inference
from services.train.server import register as register_train
from tests.gateway.helpers import gateway_over
from tests.support import InProcessServer, make_config
from tests.train.conftest import train_overrides

CHAT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                  {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
    for a in range(1, 7) for b in range(1, 4)
]
PREFERENCE_ROW = {"input": {"messages": [{"role": "user", "content": "Say hi"}]},
                  "preferred_output": [{"role": "assistant", "content": "Hi!"}],
                  "non_preferred_output": [{"role": "assistant", "content": "No."}]}


def jsonl(rows) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    ws = tmp_path_factory.mktemp("openai-ft") / "ws"
    config = make_config(ws, tiny_model_dir, **train_overrides(**{
        "train.max_concurrent": 2, "api.max_upload_bytes": 200_000, "inference.auto_load": False}))
    with InProcessServer(config, "train", register_train) as train, \
            InProcessServer(config, "inference", register_inference) as inference, \
            InProcessServer(config, "data", register_data) as data, \
            gateway_over(config, {"train": train, "inference": inference, "data": data}) as gw:
        yield gw, ws, train


@pytest.fixture(scope="module")
def sdk(stack):
    return openai.OpenAI(base_url=f"{stack[0].url}/v1", api_key="x", max_retries=0, timeout=120)


TERMINAL = {"succeeded", "failed", "cancelled", "paused"}


def settled(sdk, job_id: str, leave=("validating_files",), timeout: float = 60):
    """The job once its status is no longer one of `leave` (POST answers in validating_files)."""
    deadline = time.monotonic() + timeout
    while True:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status not in leave or time.monotonic() > deadline:
            return job
        time.sleep(0.1)

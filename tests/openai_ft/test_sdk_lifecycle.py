"""The whole fine-tuning lifecycle with the official openai SDK against a real gateway, a real
train service (real worker processes training the tiny model with LoRA) and a real inference
service: upload, create, page events while it runs, list checkpoints, chat with a checkpoint
and with fine_tuned_model, pause and resume a second job to the loss of an uninterrupted third,
cancel a fourth, signed webhooks, and the refusals of a job's state."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from services.data.server import register as register_data
from services.inference.server import register as register_inference
from services.train.server import register as register_train
from services.train.webhooks import secret_key, verify
from tests.gateway.helpers import gateway_over
from tests.openai_ft.conftest import CHAT_ROWS, jsonl, settled
from tests.support import InProcessServer, make_config
from tests.train.conftest import train_overrides
from tests.train.test_webhooks import Receiver

pytestmark = pytest.mark.slow
SECRET = "whsec_b3BlbmFpLWZ0LXRlc3Qtc2VjcmV0"
TINY = {"max_length": 64, "logging_steps": 1, "warmup_steps": 0}
RESUME_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hooked(tmp_path_factory, tiny_model_dir):
    receiver = Receiver([500])
    ws = tmp_path_factory.mktemp("openai-sdk") / "ws"
    config = make_config(ws, tiny_model_dir, **train_overrides(**{
        "train.max_concurrent": 2, "inference.auto_load": False, "train.webhook_retry_seconds": 0.3,
        "train.webhooks": [{"url": receiver.url, "secret": SECRET,
                            "events": ["fine_tuning.job.succeeded", "fine_tuning.job.cancelled"]}]}))
    with InProcessServer(config, "train", register_train) as train, \
            InProcessServer(config, "inference", register_inference) as inference, \
            InProcessServer(config, "data", register_data) as data, \
            gateway_over(config, {"train": train, "inference": inference, "data": data}) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0, timeout=180)
        yield client, gw, receiver
    receiver.close()


def wait_status(sdk, job_id, statuses, timeout=400):
    deadline = time.monotonic() + timeout
    while True:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} is still {job.status}"
        time.sleep(0.3)


def last_train_loss(sdk, job_id) -> tuple[int, float]:
    metrics = [e.data for e in sdk.fine_tuning.jobs.list_events(job_id, limit=1000).data if e.type == "metrics"
               and "train_loss" in e.data]
    newest = max(metrics, key=lambda d: d["step"])
    return newest["step"], newest["train_loss"]


def test_sdk_lifecycle(hooked):
    sdk, gw, receiver = hooked
    train = sdk.files.create(file=("adder.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
    valid = sdk.files.create(file=("adder-valid.jsonl", jsonl(CHAT_ROWS[:4])), purpose="fine-tune")

    # 1-2. Create a LoRA job on the tiny model, with the extension field for the short run.
    job = sdk.fine_tuning.jobs.create(
        model="default", training_file=train.id, validation_file=valid.id, suffix="adder", seed=3,
        metadata={"team": "math"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "batch_size": 2, "n_epochs": "auto", "learning_rate_multiplier": 5}}},
        extra_body={"wintrain": {"max_steps": 6, "save_steps": 2, "eval_steps": 2, "save_total_limit": 5, **TINY}})
    assert job.status == "validating_files" and job.id.startswith("ftjob-")
    assert job.hyperparameters.batch_size == 2 and job.hyperparameters.n_epochs == 10  # auto: 18 rows
    assert job.hyperparameters.learning_rate_multiplier == 5
    job = settled(sdk, job.id)
    assert job.status in ("queued", "running", "succeeded"), job.error
    task_id = job.wintrain["task_id"]  # type: ignore[attr-defined]
    native = httpx.get(f"{gw.url}/api/train/status/{task_id}").json()  # the same task, natively
    native = native.get("data", native)
    assert native["task_id"] == task_id and native["strategy"] == "lora"
    assert native["config"]["learning_rate"] == pytest.approx(5 * 2e-4)

    # 3. Page through the events while it runs (newest first, `after` pages back in time).
    seen: dict[str, dict] = {}
    while True:
        status = sdk.fine_tuning.jobs.retrieve(job.id).status
        page = sdk.fine_tuning.jobs.list_events(job.id, limit=3)
        for event in page:
            seen[event.id] = event.to_dict()
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    metrics = [e["data"] for e in seen.values() if e["type"] == "metrics"]
    steps = sorted({m["step"] for m in metrics})
    assert steps == [1, 2, 3, 4, 5, 6], steps
    assert all(m["total_steps"] == 6 and m["train_loss"] > 0 for m in metrics)
    assert any("valid_loss" in m and "valid_mean_token_accuracy" in m for m in metrics)
    assert any("train_mean_token_accuracy" in m for m in metrics)
    everything = sdk.fine_tuning.jobs.list_events(job.id, limit=1000).data
    assert [e.created_at for e in everything] == sorted((e.created_at for e in everything), reverse=True)
    assert {e.id for e in everything} >= set(seen)

    # The result file: a CSV of the step metrics.
    assert done.fine_tuned_model == f"ft:default:adder:{job.id}" and len(done.result_files) == 1
    csv = sdk.files.content(done.result_files[0]).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(csv) == 7

    # 4. Checkpoints, newest first, paged.
    first = sdk.fine_tuning.jobs.checkpoints.list(job.id, limit=2)
    assert [c.step_number for c in first.data] == [6, 4] and first.has_more
    every = list(first)
    assert [c.step_number for c in every] == [6, 4, 2]
    ckpt = every[1]
    assert ckpt.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-4"
    assert ckpt.metrics.train_loss > 0 and ckpt.metrics.valid_loss > 0 and ckpt.fine_tuning_job_id == job.id

    # 5. Chat with a checkpoint and with the fine-tuned model; both are listed as models.
    for model in (ckpt.fine_tuned_model_checkpoint, done.fine_tuned_model):
        reply = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2 plus 2?"}],
                                            max_tokens=4, temperature=0)
        assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1
    assert done.fine_tuned_model in [m.id for m in sdk.models.list()]
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.chat.completions.create(model=f"{done.fine_tuned_model}:ckpt-step-5", max_tokens=2,
                                    messages=[{"role": "user", "content": "hi"}])
    assert exc.value.param == "model"
    # A finished job cannot be cancelled (409).
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.cancel(job.id)

    # 6. Pause and resume a job; its final loss equals an uninterrupted run's.
    steps = 40  # long enough that the pause lands before the end on a fast, quiet machine
    same = dict(model="default", training_file=train.id, seed=5,
                hyperparameters={"batch_size": 2, "n_epochs": 1, "learning_rate_multiplier": 5},
                extra_body={"wintrain": {"max_steps": steps, "save_steps": 0, **TINY}})
    # (each settled past validating_files before the next, so they start in this order)
    paused = settled(sdk, sdk.fine_tuning.jobs.create(**same, suffix="paused").id)
    straight = settled(sdk, sdk.fine_tuning.jobs.create(**same, suffix="straight").id)
    # 7. A fourth job waits in the queue (two run at once) and is cancelled there.
    queued = settled(sdk, sdk.fine_tuning.jobs.create(**same, suffix="cancelled").id)
    assert queued.status == "queued"
    cancelled = sdk.fine_tuning.jobs.cancel(queued.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.ConflictError) as exc:  # it has no checkpoint to resume from
        sdk.fine_tuning.jobs.resume(queued.id)
    assert exc.value.param == "fine_tuning_job_id" and "checkpoint" in exc.value.message
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.cancel(queued.id)

    deadline = time.monotonic() + 300
    while sdk.fine_tuning.jobs.retrieve(paused.id).wintrain["current_step"] < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert sdk.fine_tuning.jobs.pause(paused.id).status in ("running", "paused")
    stopped = wait_status(sdk, paused.id, {"paused", "failed", "succeeded"})
    assert stopped.status == "paused", stopped.error
    assert [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(paused.id)] == [
        stopped.wintrain["current_step"]]  # type: ignore[attr-defined]
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.pause(paused.id)
    assert sdk.fine_tuning.jobs.resume(paused.id).status in ("queued", "running")
    resumed = wait_status(sdk, paused.id, {"succeeded", "failed"})
    reference = wait_status(sdk, straight.id, {"succeeded", "failed"})
    assert resumed.status == reference.status == "succeeded", (resumed.error, reference.error)
    (step_a, loss_a), (step_b, loss_b) = last_train_loss(sdk, paused.id), last_train_loss(sdk, straight.id)
    assert step_a == step_b == steps and abs(loss_a - loss_b) <= RESUME_TOLERANCE, (loss_a, loss_b)

    # Lists: newest first, filtered by metadata; every job is a task of the native API.
    listed = [j.id for j in sdk.fine_tuning.jobs.list(limit=2)]
    assert listed == [queued.id, straight.id, paused.id, job.id]
    assert [j.id for j in sdk.fine_tuning.jobs.list(extra_query={"metadata[team]": "math"})] == [job.id]
    tasks = {t["task_id"] for t in httpx.get(f"{gw.url}/api/train/tasks").json()["data"]}
    assert {sdk.fine_tuning.jobs.retrieve(j).wintrain["task_id"] for j in listed} <= tasks  # type: ignore[attr-defined]

    # 8. Signed webhooks: succeeded (after one 500, retried) and cancelled, each verifiable.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        types = [json.loads(body)["type"] for _, body, _ in receiver.received]
        if types.count("fine_tuning.job.succeeded") >= 4 and "fine_tuning.job.cancelled" in types:
            break
        time.sleep(0.2)
    bodies = [(h, json.loads(b), b) for h, b, _ in receiver.received]
    assert all(verify(secret_key(SECRET), h, raw) for h, _, raw in bodies)
    by_job = {}
    for _, body, _ in bodies:
        by_job.setdefault(body["data"]["id"], []).append(body["type"])
    assert by_job[job.id][:2] == ["fine_tuning.job.succeeded"] * 2  # 500, then delivered again
    assert by_job[queued.id] == ["fine_tuning.job.cancelled"]
    assert "fine_tuning.job.succeeded" in by_job[paused.id] and "fine_tuning.job.succeeded" in by_job[straight.id]
    notes = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=1000).data if "webhook" in e.message]
    assert any("HTTP 500" in n for n in notes) and any("delivered" in n for n in notes)

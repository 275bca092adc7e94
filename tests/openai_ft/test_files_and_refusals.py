"""/v1/files and the refusals of /v1/fine_tuning/jobs, with the official openai SDK against a
real gateway and a real train service (nothing here trains: every job is refused or fails
validation before it is queued)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.openai_ft.conftest import CHAT_ROWS, PREFERENCE_ROW, jsonl, settled


@pytest.fixture(scope="module")
def chat_file(sdk):
    return sdk.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")


def test_upload_list_get_content_delete(sdk, stack, chat_file):
    gw, ws, _ = stack
    assert chat_file.object == "file" and chat_file.purpose == "fine-tune" and chat_file.status == "processed"
    assert chat_file.bytes == len(jsonl(CHAT_ROWS)) and chat_file.filename == "chat.jsonl"
    assert (ws / "openai" / "files" / f"{chat_file.id}.jsonl").read_bytes() == jsonl(CHAT_ROWS)
    # Preference rows are data too, accepted before any job uses them.
    pref = sdk.files.create(file=("pref.jsonl", jsonl([PREFERENCE_ROW] * 3)), purpose="fine-tune")
    other = sdk.files.create(file=("notes.txt", b"free text"), purpose="user_data")
    ids = [f.id for f in sdk.files.list()]
    assert ids[:3] == [other.id, pref.id, chat_file.id]  # newest first
    assert [f.id for f in sdk.files.list(purpose="user_data")] == [other.id]
    assert sdk.files.retrieve(pref.id).bytes == len(jsonl([PREFERENCE_ROW] * 3))
    assert sdk.files.content(chat_file.id).content == jsonl(CHAT_ROWS)
    deleted = sdk.files.delete(other.id)
    assert deleted.deleted is True and deleted.id == other.id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(other.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete(other.id)
    assert not list((ws / "openai" / "files").glob(".*.tmp"))  # atomic writes leave nothing behind


def test_upload_refusals(sdk, stack):
    gw = stack[0]
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.files.create(file=("bad.jsonl", b'{"messages": []}\nnot json\n'), purpose="fine-tune")
    assert exc.value.param == "file" and "line 2" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.files.create(file=("x.jsonl", b'{"text": "hi"}\n'), purpose="fine-tune")
    assert exc.value.param == "file" and "line 1" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.files.create(file=("x.jsonl", jsonl(CHAT_ROWS)), purpose="dance")  # type: ignore[arg-type]
    assert exc.value.param == "purpose"
    # Beyond api.max_upload_bytes (200 000 here): 413 in OpenAI's shape.
    with pytest.raises(openai.APIStatusError) as exc:
        sdk.files.create(file=("big.jsonl", jsonl(CHAT_ROWS * 2000)), purpose="fine-tune")
    assert exc.value.status_code == 413 and exc.value.body["param"] == "file"
    reply = httpx.post(f"{gw.url}/v1/files", content=b"{}", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "file"


def create_error(sdk, cls, **kwargs):
    with pytest.raises(cls) as exc:
        sdk.fine_tuning.jobs.create(**kwargs)
    return exc.value


def test_job_refusals_name_the_openai_field(sdk, chat_file):
    base = dict(model="default", training_file=chat_file.id)
    other = sdk.files.create(file=("o.jsonl", jsonl(CHAT_ROWS)), purpose="batch")
    cases = [
        (dict(base, training_file="file-doesnotexist"), "training_file"),
        (dict(base, training_file=other.id), "training_file"),
        (dict(base, validation_file=chat_file.id), "validation_file"),
        (dict(base, hyperparameters={"n_epochs": -1}), "hyperparameters.n_epochs"),
        (dict(base, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 10_000}}}),
         "method.supervised.hyperparameters.n_epochs"),
        (dict(base, method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 0}}}),
         "method.supervised.hyperparameters.batch_size"),
        (dict(base, method={"type": "supervised", "supervised": {"hyperparameters": {"epochs": 3}}}),
         "method.supervised.hyperparameters.epochs"),
        (dict(base, method={"type": "distill"}), "method.type"),
        (dict(base, method={"type": "reinforcement"}), "method.type"),
        (dict(base, suffix="x" * 65), "suffix"),
        (dict(base, suffix="a:b"), "suffix"),
        (dict(base, metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
        (dict(base, seed=-3), "seed"),
        (dict(base, model=""), "model"),
        (dict(base, extra_body={"wintrain": {"strategy": "qlora"}}), "wintrain.strategy"),
        (dict(base, extra_body={"wintrain": {"learning_rate": 1.0}}), "wintrain.learning_rate"),
        (dict(base, extra_body={"wintrain": {"no_such_setting": 1}}), "wintrain.no_such_setting"),
        (dict(base, extra_body={"wintrain": {"lora": {"rank": 4}}}), "wintrain.lora.rank"),
        (dict(base, extra_body={"unknown_field": 1}), "unknown_field"),
    ]
    for kwargs, param in cases:
        err = create_error(sdk, openai.BadRequestError, **kwargs)
        assert err.param == param, (kwargs, err.param, err.message)
        assert err.body["type"] == "invalid_request_error"
    # A refusal of the train service's pre-flight (after validating_files) fails the job,
    # naming the OpenAI field too.
    job = sdk.fine_tuning.jobs.create(**dict(base, extra_body={"wintrain": {"max_length": -5}}))
    assert job.status == "validating_files", job.status
    job = settled(sdk, job.id)
    assert job.status == "failed" and job.error.param == "wintrain.max_length", job.error
    assert job.error.code == "invalid_request" and "max_length" in job.error.message, job.error
    job = settled(sdk, sdk.fine_tuning.jobs.create(**dict(base, model="models/nope")).id)
    assert job.status == "failed" and job.error.param == "model", job.error
    assert job.model_extra["wintrain"]["task_id"] is None
    assert list(sdk.fine_tuning.jobs.list()) == [] or all(j.status == "failed" for j in sdk.fine_tuning.jobs.list())


def test_a_file_that_fails_validation_fails_the_job_naming_line_and_field(sdk, stack):
    bad_rows = CHAT_ROWS[:3] + [{"messages": [{"role": "user", "content": "only a question"}]}]
    bad = sdk.files.create(file=("bad.jsonl", jsonl(bad_rows)), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model="default", training_file=bad.id, metadata={"case": "invalid"})
    assert job.status == "validating_files" and job.error is None  # the data service validates in the background
    job = settled(sdk, job.id)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 4" in job.error.message and bad.id in job.error.message, job.error.message
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "failed"
    events = list(sdk.fine_tuning.jobs.list_events(job.id))
    assert events[0].level == "error" and "line 4" in events[0].message
    assert [j.id for j in sdk.fine_tuning.jobs.list(extra_query={"metadata[case]": "invalid"})] == [job.id]
    with pytest.raises(openai.ConflictError) as exc:
        sdk.fine_tuning.jobs.cancel(job.id)
    assert exc.value.param == "fine_tuning_job_id"
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.fine_tuning.jobs.retrieve("ftjob-0000")
    assert exc.value.param == "fine_tuning_job_id"
    # The preference file fails a supervised job, naming the line and the field.
    pref = sdk.files.create(file=("pref.jsonl", jsonl([PREFERENCE_ROW] * 3)), purpose="fine-tune")
    job = settled(sdk, sdk.fine_tuning.jobs.create(model="default", training_file=pref.id).id)
    assert job.status == "failed" and job.error.param == "training_file", job.error

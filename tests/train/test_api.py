"""TrainService over real gRPC, without training: pre-flight errors (each naming its field,
nothing stored), unknown tasks, paging, the job store surviving a restart, and Watch replay by
sequence number."""

from __future__ import annotations

import json
import os
import shutil

import grpc
import pytest

from services.common.rpc_status import decode_rpc_error
from services.train.preflight import (OPTIMIZERS, SCHEDULERS, check_output_dir, missing_target_modules,
                                      module_names)
from services.train.server import register
from services.train.store import COMPLETED, FAILED, TrainJobStore
from tests.support import InProcessServer
from tests.train.conftest import rpc_error, start, watch
from wintrain.train.v1 import train_pb2, train_pb2_grpc


def failure(fn, *args, **kwargs):
    return decode_rpc_error(rpc_error(fn, *args, **kwargs))


def fields(f) -> set[str]:
    return {field for field, _ in f.field_violations}


def assert_nothing_stored(stub):
    assert list(stub.ListTrainingTasks(train_pb2.ListTrainingTasksRequest(), timeout=10).tasks) == []


# -- pre-flight ---------------------------------------------------------------------------------

def test_strategy_must_be_trl_or_lora(stub, datasets_dir):
    f = failure(start, stub, strategy=train_pb2.STRATEGY_UNSPECIFIED)
    assert f.code == "INVALID_ARGUMENT" and fields(f) == {"strategy"}
    assert "STRATEGY_TRL" in f.message and "STRATEGY_LORA" in f.message  # what a gRPC client can send
    assert_nothing_stored(stub)


def test_every_bad_number_is_reported_at_once(stub, datasets_dir):
    f = failure(start, stub, learning_rate=0, per_device_train_batch_size=0, max_steps=0, save_total_limit=0,
                optim="adamw_bnb_8bit", lr_scheduler_type="sideways", num_processes=0)
    assert f.code == "INVALID_ARGUMENT"
    assert fields(f) == {"config.learning_rate", "config.per_device_train_batch_size", "config.max_steps",
                         "config.save_total_limit", "config.optim", "config.lr_scheduler_type",
                         "config.num_processes"}
    f = failure(start, stub, num_train_epochs=-1, warmup_steps=-1, logging_steps=0, max_length=4)
    assert fields(f) == {"config.num_train_epochs", "config.warmup_steps", "config.logging_steps",
                         "config.max_length"}
    f = failure(start, stub, learning_rate=float("nan"))
    assert fields(f) == {"config.learning_rate"}
    assert_nothing_stored(stub)


def test_lora_settings_are_checked(stub, datasets_dir):
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA,
                lora={"r": 0, "lora_alpha": -1, "lora_dropout": 1.5, "bias": "some"})
    assert f.code == "INVALID_ARGUMENT"
    assert fields(f) == {"config.lora_config.r", "config.lora_config.lora_alpha",
                         "config.lora_config.lora_dropout", "config.lora_config.bias"}
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, lora={"target_modules": ["q_proj", "qkv_fused"]})
    assert f.code == "INVALID_ARGUMENT" and fields(f) == {"config.lora_config.target_modules"}
    assert "qkv_fused" in f.message and "q_proj" in f.message  # names what the model has
    # lm_head (tied to the embeddings in the tiny model) cannot be a LoRA target under TRL's SFT:
    # the refusal names the setting that trains it instead
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, lora={"target_modules": ["q_proj", "lm_head"]})
    assert f.code == "INVALID_ARGUMENT" and fields(f) == {"config.lora_config.target_modules"}
    assert "modules_to_save" in f.message
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, lora={"modules_to_save": ["lm_head", "nope_head"]})
    assert f.code == "INVALID_ARGUMENT" and fields(f) == {"config.lora_config.modules_to_save"}
    assert "nope_head" in f.message and "lm_head" not in f.message.split("not found")[0]
    assert_nothing_stored(stub)


def test_dataset_paths(stub, datasets_dir, workspace, tmp_path):
    f = failure(start, stub, dataset="datasets/missing.jsonl")
    assert (f.code, fields(f)) == ("NOT_FOUND", {"dataset_path"})
    outside = tmp_path / "outside.jsonl"
    shutil.copy(datasets_dir / "qa_facts.jsonl", outside)
    f = failure(start, stub, dataset=str(outside))
    assert (f.code, fields(f)) == ("PERMISSION_DENIED", {"dataset_path"})
    f = failure(start, stub, dataset="../outside.jsonl")
    assert (f.code, fields(f)) == ("PERMISSION_DENIED", {"dataset_path"})
    os.symlink(outside, workspace / "link.jsonl")
    f = failure(start, stub, dataset="link.jsonl")
    assert (f.code, fields(f)) == ("PERMISSION_DENIED", {"dataset_path"})
    f = failure(start, stub, eval_dataset="datasets/nope.jsonl")
    assert (f.code, fields(f)) == ("NOT_FOUND", {"eval_dataset_path"})
    assert_nothing_stored(stub)


def test_invalid_rows_are_reported_with_the_data_service_messages(stub, datasets_dir):
    rows = [json.loads(line) for line in (datasets_dir / "qa_facts.jsonl").read_text().splitlines()]
    bad = datasets_dir / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(rows[0]), '{"conversations": [{"role": "robot", "content": "hi"}]}',
                              "{not json"]) + "\n", encoding="utf-8")
    f = failure(start, stub, dataset="datasets/bad.jsonl")
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"dataset_path"})
    assert "line 2" in f.message and "line 3" in f.message
    f = failure(start, stub, eval_dataset="datasets/bad.jsonl")
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"eval_dataset_path"})
    assert_nothing_stored(stub)


def test_model_path_must_be_a_trainable_model(stub, datasets_dir, workspace, ws_model):
    (workspace / "empty").mkdir()
    f = failure(start, stub, model_path="empty")
    assert (f.code, fields(f)) == ("FAILED_PRECONDITION", {"config.model_path"})
    f = failure(start, stub, model_path="nowhere")
    assert (f.code, fields(f)) == ("NOT_FOUND", {"config.model_path"})
    adapter = workspace / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(ws_model)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    f = failure(start, stub, model_path="adapter")
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"config.model_path"})
    f = failure(start, stub, model_path="models/tiny-chat", max_length=4096)
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"config.max_length"})
    assert_nothing_stored(stub)


def test_a_model_that_needs_remote_code_is_refused_at_preflight(stub, datasets_dir, workspace, ws_model):
    custom = workspace / "custom"
    shutil.copytree(ws_model, custom)
    cfg = json.loads((custom / "config.json").read_text())
    cfg.update(model_type="wintrain_custom", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (custom / "config.json").write_text(json.dumps(cfg))
    f = failure(start, stub, model_path="custom")
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"config.model_path"})
    assert "remote code" in f.message
    assert_nothing_stored(stub)


def test_an_adapter_whose_base_is_outside_the_roots_is_refused(stub, datasets_dir, workspace, ws_model, tmp_path):
    outside = tmp_path / "outside-base"
    shutil.copytree(ws_model, outside)
    adapter = workspace / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(outside)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    f = failure(start, stub, model_path="adapter")
    assert (f.code, fields(f)) == ("PERMISSION_DENIED", {"config.model_path"})
    assert "base_model_name_or_path" in f.message
    assert_nothing_stored(stub)


def test_output_dir_rules(stub, datasets_dir, workspace):
    for bad in (".", str(workspace), "runs/x"):
        f = failure(start, stub, output=bad)
        assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"output_dir"}), bad
    f = failure(start, stub, output="datasets")  # holds the dataset itself
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"output_dir"})
    (workspace / "afile").write_text("x")
    f = failure(start, stub, output="afile")
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"output_dir"})
    (workspace / "photos").mkdir()
    (workspace / "photos" / "cat.jpg").write_bytes(b"meow")
    f = failure(start, stub, output="photos")
    assert (f.code, fields(f)) == ("FAILED_PRECONDITION", {"output_dir"})
    f = failure(start, stub, output="/etc/wintrain-out")
    assert (f.code, fields(f)) == ("PERMISSION_DENIED", {"output_dir"})
    assert_nothing_stored(stub)


def test_resume_from_checkpoint_of_a_new_task(stub, datasets_dir, workspace):
    f = failure(start, stub, resume_from_checkpoint="last")
    assert (f.code, fields(f)) == ("FAILED_PRECONDITION", {"config.resume_from_checkpoint"})
    (workspace / "notackpt").mkdir()
    f = failure(start, stub, resume_from_checkpoint="notackpt")
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"config.resume_from_checkpoint"})
    pickled = workspace / "checkpoint-3"
    pickled.mkdir()
    (pickled / "trainer_state.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    f = failure(start, stub, resume_from_checkpoint="checkpoint-3")
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"config.resume_from_checkpoint"})
    assert "safetensors" in f.message
    assert_nothing_stored(stub)


def test_output_dir_of_a_live_task_is_refused(tmp_path):
    store = TrainJobStore(tmp_path / "jobs.db")
    out = tmp_path / "out" / "model"
    store.create(task_id="live", strategy="trl", dataset_path="d", eval_dataset_path="", output_dir="out/model",
                 config={}, resolved={"output_dir": str(out)})
    from services.common.errors import AlreadyExists

    for candidate in (out, out / "inner", out.parent):
        with pytest.raises(AlreadyExists) as info:  # 409: the folder is taken, not a bad request
            check_output_dir(candidate, protected=[], store=store)
        assert info.value.field_violations[0][0] == "output_dir"
    check_output_dir(tmp_path / "other", protected=[], store=store)
    check_output_dir(out, protected=[], store=store, own_task="live")


def test_known_optimizers_and_schedulers_exist_in_transformers():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert set(OPTIMIZERS) <= {o.value for o in OptimizerNames}
    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


def test_known_model_types_are_those_of_the_installed_transformers():
    # Read from its source so that pre-flight never imports torch into the server.
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from services.train.preflight import known_model_types

    assert known_model_types() == set(CONFIG_MAPPING_NAMES)


def test_lora_targets_are_read_from_the_safetensors_header(tiny_model_dir):
    modules = module_names(tiny_model_dir)
    assert "model.layers.0.self_attn.q_proj" in modules and "model.layers.3.mlp.down_proj" in modules
    assert missing_target_modules(["q_proj", "mlp.up_proj", "self_attn.o_proj", "nope"], modules) == ["nope"]


# -- reading tasks ------------------------------------------------------------------------------

def test_unknown_and_empty_task_ids(stub):
    for call, request in ((stub.GetTrainingStatus, train_pb2.GetTrainingStatusRequest),
                          (stub.CancelTraining, train_pb2.CancelTrainingRequest),
                          (stub.ResumeTraining, train_pb2.ResumeTrainingRequest)):
        assert failure(call, request(task_id="nope"), timeout=10).code == "NOT_FOUND"
        f = failure(call, request(task_id=""), timeout=10)
        assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"task_id"})
    f = failure(watch, stub, "nope")
    assert f.code == "NOT_FOUND"
    f = failure(stub.ListTrainingTasks, train_pb2.ListTrainingTasksRequest(page_token="garbage!"), timeout=10)
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"page_token"})
    f = failure(stub.ListTrainingTasks, train_pb2.ListTrainingTasksRequest(page_size=-1), timeout=10)
    assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"page_size"})


def _seed_store(workspace, n_finished: int):
    """A job store as a previous server left it: finished tasks, and one still `running`."""
    store = TrainJobStore(workspace / "jobs.db")
    ids = []
    for i in range(n_finished):
        task_id = f"task-{i}"
        store.create(task_id=task_id, strategy="lora" if i % 2 else "trl", dataset_path="d.jsonl",
                     eval_dataset_path="", output_dir=f"out/{i}", config={"learning_rate": 0.01, "seed": i},
                     resolved={"output_dir": str(workspace / "out" / str(i))})
        attempt = store.claim(task_id)
        for step in range(1, 4):
            store.report(task_id, attempt, "progress", fields={"current_step": step, "total_steps": 3,
                                                                "loss": 4.0 - step, "progress": 100 * step / 3})
        store.finish(task_id, COMPLETED if i % 3 else FAILED, attempt=attempt, message="ended",
                     error_message="" if i % 3 else "boom")
        ids.append(task_id)
    store.create(task_id="was-running", strategy="trl", dataset_path="d.jsonl", eval_dataset_path="",
                 output_dir="out/r", config={}, resolved={"output_dir": str(workspace / "out" / "r")})
    store.claim("was-running")
    store.close()
    return ids


def test_store_survives_restart_and_pages_newest_first(workspace, train_config):
    ids = _seed_store(workspace, 5)
    with InProcessServer(train_config, "train", register) as server:
        stub = train_pb2_grpc.TrainServiceStub(server.channel())
        seen, token, pages = [], "", 0
        while True:
            page = stub.ListTrainingTasks(train_pb2.ListTrainingTasksRequest(page_size=2, page_token=token), timeout=10)
            seen += [t.task_id for t in page.tasks]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert seen == ["was-running", *reversed(ids)] and pages == 3
        restarted = stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id="was-running"), timeout=10)
        assert restarted.status == train_pb2.TASK_STATUS_INTERRUPTED
        assert "restarted" in restarted.error_message
        done = stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id="task-1"), timeout=10)
        assert (done.status, done.current_step, done.total_steps, done.loss) == (
            train_pb2.TASK_STATUS_COMPLETED, 3, 3, 1.0)
        assert done.strategy == train_pb2.STRATEGY_LORA and done.config.seed == 1

        # Ended tasks cannot be cancelled; completed ones cannot be resumed; no checkpoint, no resume.
        f = failure(stub.CancelTraining, train_pb2.CancelTrainingRequest(task_id="task-1"), timeout=10)
        assert f.code == "FAILED_PRECONDITION"
        f = failure(stub.ResumeTraining, train_pb2.ResumeTrainingRequest(task_id="task-1"), timeout=10)
        assert f.code == "FAILED_PRECONDITION"
        f = failure(stub.ResumeTraining, train_pb2.ResumeTrainingRequest(task_id="task-0"), timeout=10)
        assert f.code == "FAILED_PRECONDITION" and "no checkpoint" in f.message
        f = failure(stub.ResumeTraining, train_pb2.ResumeTrainingRequest(task_id="task-0", checkpoint="../x"),
                    timeout=10)
        assert f.code == "PERMISSION_DENIED"


def test_watch_replays_by_sequence_and_ends_on_a_terminal_task(workspace, train_config):
    _seed_store(workspace, 1)
    with InProcessServer(train_config, "train", register) as server:
        stub = train_pb2_grpc.TrainServiceStub(server.channel())
        snapshot_only = watch(stub, "task-0", timeout=10)
        assert [(e.sequence, e.kind) for e in snapshot_only] == [(0, train_pb2.EVENT_KIND_SNAPSHOT)]
        assert snapshot_only[0].status == train_pb2.TASK_STATUS_FAILED and snapshot_only[0].current_step == 3
        replay = watch(stub, "task-0", from_sequence=1, timeout=10)
        assert [e.sequence for e in replay] == [2, 3, 4, 5, 6]
        assert [e.kind for e in replay] == [train_pb2.EVENT_KIND_STATUS] + [train_pb2.EVENT_KIND_PROGRESS] * 3 + [
            train_pb2.EVENT_KIND_STATUS]
        assert [e.current_step for e in replay[1:4]] == [1, 2, 3]
        assert replay[-1].status == train_pb2.TASK_STATUS_FAILED
        assert watch(stub, "task-0", from_sequence=4, timeout=10)[0].sequence == 5
        assert watch(stub, "task-0", from_sequence=99, timeout=10) == []
        f = failure(watch, stub, "task-0", from_sequence=-1, timeout=10)
        assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"from_sequence"})
        # replay: every stored event from the creation on, no snapshot.
        everything = watch(stub, "task-0", replay=True, timeout=10)
        assert [e.sequence for e in everything] == [1, 2, 3, 4, 5, 6]
        assert everything[0].kind == train_pb2.EVENT_KIND_STATUS
        assert everything[0].status == train_pb2.TASK_STATUS_PENDING
        f = failure(watch, stub, "task-0", from_sequence=2, replay=True, timeout=10)
        assert (f.code, fields(f)) == ("INVALID_ARGUMENT", {"replay"})
        assert failure(watch, stub, "no-such-task", replay=True, timeout=10).code == "NOT_FOUND"


def test_a_file_that_is_not_a_job_store_stops_start_up(workspace, train_config):
    (workspace / "jobs.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(Exception) as info:
        with InProcessServer(train_config, "train", register):
            pass
    assert "job store" in str(info.value)


def test_grpc_status_is_never_internal_for_bad_input(stub, datasets_dir):
    # A garbage request shape (enum value out of range) is still a clean INVALID_ARGUMENT.
    request = train_pb2.StartTrainingRequest(strategy=99, dataset_path="datasets/qa_facts.jsonl", output_dir="o")
    with pytest.raises(grpc.RpcError) as info:
        stub.StartTraining(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

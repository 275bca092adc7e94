"""The native controls of issue 19 over real gRPC, real workers and real training on the tiny
model: ListCheckpoints, SaveCheckpoint (save now, keep training), PauseTraining (checkpoint,
free the worker, `paused`; ResumeTraining continues the same task to the loss of an
uninterrupted run) and save_total_limit keeping the best checkpoint by eval loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.rpc_status import decode_rpc_error
from services.train import control
from services.train.server import register
from tests.support import InProcessServer, make_config
from tests.train.conftest import get, rpc_error, start, train_overrides, wait_for, wait_terminal, watch
from wintrain.train.v1 import train_pb2, train_pb2_grpc

pytestmark = pytest.mark.slow

RUN = dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, max_length=128, warmup_steps=0,
           learning_rate=1e-3, seed=11, logging_steps=1)
RESUME_TOLERANCE = 1e-4


def refused(fn, request) -> tuple[str, set[str]]:
    failure = decode_rpc_error(rpc_error(fn, request, timeout=10))
    return failure.code, {name for name, _ in failure.field_violations}


def checkpoints(stub, task_id):
    return list(stub.ListCheckpoints(train_pb2.ListCheckpointsRequest(task_id=task_id), timeout=20).checkpoints)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def parallel_stub(workspace, tiny_model_dir):
    config = make_config(workspace, tiny_model_dir, **train_overrides(**{"train.max_concurrent": 2}))
    with InProcessServer(config, "train", register) as server:
        yield train_pb2_grpc.TrainServiceStub(server.channel()), server


def test_save_now_pause_resume_and_list(parallel_stub, datasets_dir, workspace):
    stub, server = parallel_stub
    steps = 40  # long enough that a pause lands before the end on a fast, quiet machine
    # The reference: the same run left alone, side by side.
    ref = start(stub, output="out/ref", max_steps=steps, save_steps=0, **RUN)
    task = start(stub, output="out/paused", max_steps=steps, save_steps=0, save_total_limit=5, **RUN)
    tid = task.task_id

    # Unknown task and wrong state answer the right codes, naming task_id.
    assert refused(stub.ListCheckpoints, train_pb2.ListCheckpointsRequest(task_id="nope")) == (
        "NOT_FOUND", {"task_id"})

    wait_for(stub, tid, lambda t: t.current_step >= 2, what="two steps")
    # Save now: a checkpoint appears at a step save_steps (0: only at the end) never asked for,
    # and training goes on.
    reply = stub.SaveCheckpoint(train_pb2.SaveCheckpointRequest(task_id=tid), timeout=10)
    assert reply.status == train_pb2.TASK_STATUS_RUNNING
    saved = wait_for(stub, tid, lambda t: t.last_checkpoint != "", what="the save-now checkpoint")
    first = checkpoints(stub, tid)
    assert len(first) == 1 and first[0].step >= 2 and Path(first[0].path).name == f"checkpoint-{first[0].step}"
    assert first[0].HasField("train_loss") and first[0].train_loss > 0 and first[0].size_bytes > 10_000
    assert first[0].created_at.endswith("Z") and Path(first[0].path).is_dir()
    assert Path(saved.last_checkpoint) == Path(first[0].path)
    wait_for(stub, tid, lambda t: t.current_step >= first[0].step + 1, what="training to go on")
    assert get(stub, tid).status == train_pb2.TASK_STATUS_RUNNING

    # Pause: a checkpoint at the step it stops, the worker gone, status paused.
    pid = server.runtime.train_jobs.store.get(tid).worker_pid
    assert pid > 0 and alive(pid)
    stub.PauseTraining(train_pb2.PauseTrainingRequest(task_id=tid), timeout=10)
    paused = wait_for(stub, tid, lambda t: t.status not in (train_pb2.TASK_STATUS_RUNNING,), timeout=120,
                      what="the pause")
    assert paused.status == train_pb2.TASK_STATUS_PAUSED, paused
    assert paused.current_step < steps
    listed = checkpoints(stub, tid)
    assert [c.step for c in listed] == [first[0].step, paused.current_step]
    wait_for(stub, tid, lambda t: not alive(pid), timeout=30, what="the worker process to exit")
    # A paused task is not running: save-now and pause again are refused, naming task_id.
    for call, request in ((stub.SaveCheckpoint, train_pb2.SaveCheckpointRequest(task_id=tid)),
                          (stub.PauseTraining, train_pb2.PauseTrainingRequest(task_id=tid))):
        assert refused(call, request) == ("FAILED_PRECONDITION", {"task_id"})

    # Resume continues the same task from the pause checkpoint to the end.
    stub.ResumeTraining(train_pb2.ResumeTrainingRequest(task_id=tid), timeout=10)
    assert not control.is_requested(workspace / "runs" / tid, control.PAUSE)  # the flag does not stop it again
    done = wait_terminal(stub, tid, timeout=300)
    assert done.status == train_pb2.TASK_STATUS_COMPLETED, done.error_message
    ref_done = wait_terminal(stub, ref.task_id, timeout=300)
    assert ref_done.status == train_pb2.TASK_STATUS_COMPLETED
    assert done.current_step == ref_done.current_step == steps
    assert abs(done.metrics["final_loss"] - ref_done.metrics["final_loss"]) <= RESUME_TOLERANCE
    assert abs(done.loss - ref_done.loss) <= RESUME_TOLERANCE
    replayed = watch(stub, tid, replay=True)
    statuses = [e.message for e in replayed if e.status == train_pb2.TASK_STATUS_PAUSED]
    assert statuses and statuses[0].startswith(f"paused at step {paused.current_step}")

    # ListTrainingEvents pages through the same stored events without following the task.
    paged, after = [], 0
    while True:
        page = stub.ListTrainingEvents(train_pb2.ListTrainingEventsRequest(task_id=tid, after_sequence=after,
                                                                           page_size=7), timeout=10)
        paged += page.events
        assert len(page.events) <= 7
        if not page.has_more:
            break
        after = page.events[-1].sequence
    assert [(e.sequence, e.kind, e.loss) for e in paged] == [(e.sequence, e.kind, e.loss) for e in replayed]
    assert refused(stub.ListTrainingEvents, train_pb2.ListTrainingEventsRequest(task_id=tid, after_sequence=-1)) == (
        "INVALID_ARGUMENT", {"after_sequence"})


def test_save_total_limit_keeps_best_eval_checkpoint(stub, datasets_dir):
    # Eval on another dataset than the one trained on, lr high enough that eval loss moves.
    task = start(stub, output="out/best", dataset="datasets/qa_facts.jsonl",
                 eval_dataset="datasets/bilingual_chat.jsonl", max_steps=8, save_steps=2, eval_steps=2,
                 save_total_limit=2, **{**RUN, "learning_rate": 2e-2})
    done = wait_terminal(stub, task.task_id, timeout=300)
    assert done.status == train_pb2.TASK_STATUS_COMPLETED, done.error_message
    evals = {e.current_step: e.metrics["eval_loss"] for e in watch(stub, task.task_id, replay=True)
             if e.kind == train_pb2.EVENT_KIND_EVAL}
    assert sorted(evals) == [2, 4, 6, 8]
    best_step = min(evals, key=evals.get)
    listed = checkpoints(stub, task.task_id)
    # Two kept: the latest, and the best one if it is not the latest (else the two latest).
    kept = sorted({best_step, 8}) if best_step < 6 else [6, 8]
    assert [c.step for c in listed] == kept
    assert [c.step for c in listed if c.best] == [best_step]
    for c in listed:
        assert c.HasField("eval_loss") and abs(c.eval_loss - evals[c.step]) < 1e-9

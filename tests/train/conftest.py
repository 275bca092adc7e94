"""Fixtures of the training service tests: a config tuned for fast real runs, the bundled
datasets inside the workspace, an in-process TrainService, and helpers to follow a task."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import grpc
import pytest

from tools.tiny_model import DATASETS_DIR
from services.train.server import register
from tests.support import InProcessServer, make_config
from wintrain.train.v1 import train_pb2, train_pb2_grpc

TERMINAL = {train_pb2.TASK_STATUS_COMPLETED, train_pb2.TASK_STATUS_FAILED,
            train_pb2.TASK_STATUS_CANCELLED, train_pb2.TASK_STATUS_INTERRUPTED}


def train_overrides(**extra) -> dict:
    values = {
        "train.cancel_grace_seconds": 20,
        # One thread per worker: the test machine has two cores shared by everyone.
        "train.worker_threads": 1,
        "train.watch_poll_seconds": 0.1,
    }
    values.update(extra)
    return values


@pytest.fixture
def train_config(workspace, tiny_model_dir):
    return make_config(workspace, tiny_model_dir, **train_overrides())


@pytest.fixture
def datasets_dir(workspace) -> Path:
    target = workspace / "datasets"
    target.mkdir(exist_ok=True)
    for src in DATASETS_DIR.glob("*.jsonl"):
        shutil.copy(src, target / src.name)
    return target


@pytest.fixture
def train_server(train_config):
    with InProcessServer(train_config, "train", register) as server:
        yield server


@pytest.fixture
def stub(train_server):
    return train_pb2_grpc.TrainServiceStub(train_server.channel())


def start(stub, *, strategy=train_pb2.STRATEGY_TRL, dataset="datasets/qa_facts.jsonl", output="out/model",
          eval_dataset: str | None = None, lora: dict | None = None, **config) -> train_pb2.StartTrainingResponse:
    cfg = train_pb2.TrainingConfig(**config)
    if lora is not None:
        cfg.lora_config.CopyFrom(train_pb2.LoraConfig(**lora))
    request = train_pb2.StartTrainingRequest(strategy=strategy, dataset_path=dataset, output_dir=output, config=cfg)
    if eval_dataset is not None:
        request.eval_dataset_path = eval_dataset
    return stub.StartTraining(request, timeout=60)


def get(stub, task_id: str) -> train_pb2.TrainingTask:
    return stub.GetTrainingStatus(train_pb2.GetTrainingStatusRequest(task_id=task_id), timeout=10)


def wait_for(stub, task_id: str, predicate: Callable[[train_pb2.TrainingTask], bool], timeout: float = 180,
             what: str = "condition") -> train_pb2.TrainingTask:
    deadline = time.monotonic() + timeout
    task = get(stub, task_id)
    while not predicate(task):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; task is {task}")
        time.sleep(0.2)
        task = get(stub, task_id)
    return task


def wait_terminal(stub, task_id: str, timeout: float = 240) -> train_pb2.TrainingTask:
    return wait_for(stub, task_id, lambda t: t.status in TERMINAL, timeout, "a terminal state")


def watch(stub, task_id: str, from_sequence: int = 0, timeout: float = 300,
          replay: bool = False) -> list[train_pb2.TrainingEvent]:
    request = train_pb2.WatchTrainingRequest(task_id=task_id, from_sequence=from_sequence, replay=replay)
    return list(stub.WatchTraining(request, timeout=timeout))


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value

"""TensorBoard: a real training run writes event files under its run folder
(<workspace>/runs/<task>/tensorboard), and TensorBoard's own reader finds in them the train and
eval losses the task logged."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import start, wait_terminal
from wintrain.train.v1 import train_pb2


@pytest.mark.slow
def test_event_files_hold_the_logged_losses(stub, datasets_dir, workspace):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    resp = start(stub, strategy=train_pb2.STRATEGY_LORA, output="out/tb", lora={"r": 4},
                 eval_dataset="datasets/train_sample.jsonl", max_steps=4, logging_steps=1, eval_steps=2,
                 per_device_train_batch_size=2, gradient_accumulation_steps=1, max_length=64, warmup_steps=0)
    task = wait_terminal(stub, resp.task_id)
    assert task.status == train_pb2.TASK_STATUS_COMPLETED, task.error_message
    folder = workspace / "runs" / resp.task_id / "tensorboard"
    assert list(folder.rglob("events.out.tfevents.*")), f"no event file under {folder}"
    acc = EventAccumulator(str(folder))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "eval/loss", "train/learning_rate"} <= set(scalars), scalars
    log = [json.loads(line) for line in (workspace / "out" / "tb" / "training_log.jsonl").read_text().splitlines()]
    train = {e["step"]: e["loss"] for e in log if e.get("kind") == "train"}
    evals = {e["step"]: e["eval_loss"] for e in log if e.get("kind") == "eval"}
    assert sorted(train) == [1, 2, 3, 4] and sorted(evals) == [2, 4]
    assert {s.step: s.value for s in acc.Scalars("train/loss")} == pytest.approx(train, abs=1e-5)
    assert {s.step: s.value for s in acc.Scalars("eval/loss")} == pytest.approx(evals, abs=1e-5)

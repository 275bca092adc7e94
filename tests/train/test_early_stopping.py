"""Early stopping over real gRPC with real worker processes: pre-flight refuses what cannot work
(no eval dataset, a threshold without patience, checkpoints that are not at evaluation steps);
an SFT and a DPO run stop when eval_loss stops improving, end `completed` with a message saying
where they stopped and which checkpoint is best, and publish that checkpoint's weights."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tests.train.conftest import start, wait_terminal, watch
from tests.train.test_api import assert_nothing_stored, failure, fields
from wintrain.train.v1 import train_pb2

LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0)
# An improvement of eval_loss counts only above the threshold: with 10 none does, so the run
# stops at the (patience + 1)-th evaluation, whatever the losses are.
EARLY = dict(early_stopping_patience=2, early_stopping_threshold=10.0, eval_steps=2, save_steps=2,
             max_steps=40, logging_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1,
             learning_rate=5e-3, warmup_steps=0, max_length=96, save_total_limit=2)


def test_early_stopping_needs_an_eval_dataset_and_aligned_checkpoints(stub, datasets_dir):
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, early_stopping_patience=2)
    assert f.code == "INVALID_ARGUMENT" and fields(f) == {"config.early_stopping_patience"}
    assert "eval_dataset_path" in f.message
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, early_stopping_threshold=0.1,
                eval_dataset="datasets/train_sample.jsonl")
    assert fields(f) == {"config.early_stopping_threshold"}
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, early_stopping_patience=0,
                early_stopping_threshold=float("nan"), eval_steps=5, save_steps=10,
                eval_dataset="datasets/train_sample.jsonl")
    assert fields(f) == {"config.early_stopping_patience", "config.early_stopping_threshold"}
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, early_stopping_patience=2, eval_steps=4,
                save_steps=6, eval_dataset="datasets/train_sample.jsonl")
    assert fields(f) == {"config.save_steps"} and "multiple" in f.message
    # early stopping keeps the best checkpoint: without checkpoints (save_steps 0) it cannot
    f = failure(start, stub, strategy=train_pb2.STRATEGY_LORA, early_stopping_patience=2, save_steps=0,
                eval_dataset="datasets/train_sample.jsonl")
    assert fields(f) == {"config.save_steps"} and "checkpoints" in f.message
    assert_nothing_stored(stub)


def test_patience_alone_is_accepted_with_the_default_checkpoints(stub, datasets_dir):
    # no eval_steps: every checkpoint (save_steps, default 50) is evaluated, so nothing else to set
    resp = start(stub, strategy=train_pb2.STRATEGY_LORA, output="out/patience-only", early_stopping_patience=2,
                 eval_dataset="datasets/train_sample.jsonl")
    assert resp.task_id
    stub.CancelTraining(train_pb2.CancelTrainingRequest(task_id=resp.task_id), timeout=10)
    task = wait_terminal(stub, resp.task_id, timeout=120)
    assert task.status == train_pb2.TASK_STATUS_CANCELLED


def test_without_eval_steps_evaluations_follow_save_steps():
    from services.train.preflight import evaluation_interval
    from services.train.settings import TrainingSettings

    d = TrainingSettings.defaults()
    assert evaluation_interval(d) == d.logging_steps  # no early stopping: every logging_steps
    patient = dataclasses.replace(d, early_stopping_patience=2)
    assert evaluation_interval(patient) == d.save_steps != d.logging_steps
    assert evaluation_interval(dataclasses.replace(patient, eval_steps=5)) == 5


def _adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _check_stopped_at_best(stub, workspace, task_id, output):
    task = wait_terminal(stub, task_id, timeout=400)
    assert task.status == train_pb2.TASK_STATUS_COMPLETED, task.error_message
    assert task.current_step == 6 < task.total_steps == 40  # evaluations at 2, 4, 6: no improvement counted
    match = re.search(r"stopped early at step 6 of 40.*best checkpoint: (checkpoint-\d+) \(eval_loss ([\d.]+)\)",
                      task.message)
    assert match, task.message
    evals = {e.current_step: e.metrics["eval_loss"] for e in watch(stub, task_id, replay=True)
             if e.kind == train_pb2.EVENT_KIND_EVAL}
    assert sorted(evals) == [2, 4, 6]
    best_step = min(evals, key=evals.get)
    assert match.group(1) == f"checkpoint-{best_step}"
    assert float(match.group(2)) == pytest.approx(evals[best_step], abs=1e-4)
    # the output is the best checkpoint's adapter (kept by save_total_limit beside the latest)
    best = workspace / "runs" / task_id / "checkpoints" / match.group(1)
    out, kept = _adapter_tensors(workspace / output), _adapter_tensors(best)
    assert out.keys() == kept.keys()
    assert all((out[k] == kept[k]).all() for k in out)
    if best_step != 6:
        last = _adapter_tensors(workspace / "runs" / task_id / "checkpoints" / "checkpoint-6")
        assert any((out[k] != last[k]).any() for k in out)


@pytest.mark.slow
def test_sft_and_dpo_stop_early_and_publish_the_best_checkpoint(stub, datasets_dir, workspace):
    # a small held-out preference file: each evaluation scores 8 pairs with policy and reference
    pairs = (datasets_dir / "preference_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    (datasets_dir / "pairs_eval.jsonl").write_text("\n".join(pairs[-8:]) + "\n", encoding="utf-8")
    sft = start(stub, strategy=train_pb2.STRATEGY_LORA, output="out/early-sft", lora=LORA,
                dataset="datasets/qa_facts.jsonl", eval_dataset="datasets/train_sample.jsonl", **EARLY)
    dpo = start(stub, strategy=train_pb2.STRATEGY_DPO, output="out/early-dpo", lora=LORA,
                dataset="datasets/preference_pairs.jsonl", eval_dataset="datasets/pairs_eval.jsonl",
                max_prompt_length=48, **EARLY)
    _check_stopped_at_best(stub, workspace, sft.task_id, "out/early-sft")
    _check_stopped_at_best(stub, workspace, dpo.task_id, "out/early-dpo")


@pytest.mark.slow
def test_patience_without_eval_steps_evaluates_every_checkpoint(stub, datasets_dir, workspace):
    # eval_steps unset (logging every step): evaluations come at each checkpoint (2, 4), and with
    # patience 1 and a threshold no improvement reaches, the run stops at the second one
    run = {k: v for k, v in EARLY.items() if k != "eval_steps"}
    resp = start(stub, strategy=train_pb2.STRATEGY_LORA, output="out/early-follow", lora=LORA,
                 dataset="datasets/qa_facts.jsonl", eval_dataset="datasets/train_sample.jsonl",
                 **{**run, "early_stopping_patience": 1})
    task = wait_terminal(stub, resp.task_id, timeout=400)
    assert task.status == train_pb2.TASK_STATUS_COMPLETED, task.error_message
    assert task.current_step == 4 < task.total_steps == 40, task.message
    assert "stopped early at step 4 of 40" in task.message
    evals = sorted(e.current_step for e in watch(stub, resp.task_id, replay=True)
                   if e.kind == train_pb2.EVENT_KIND_EVAL)
    assert evals == [2, 4]

"""Unit tests of ProgressCallback's whole-run figures after a resume (no training: a
TrainerState filled as the Trainer fills it). The real runs are in test_resume_metrics.py."""

from __future__ import annotations

from types import SimpleNamespace

from transformers import TrainerControl, TrainerState

from services.train.progress import ProgressCallback, StopControl


def callback() -> ProgressCallback:
    return ProgressCallback(None, "t", 1, StopControl(None, "t", 1), None)


def log(cb: ProgressCallback, state: TrainerState, logs: dict) -> dict:
    # As Trainer.log does: append a copy with the step, then call the callbacks with `logs`.
    state.log_history.append({**logs, "step": state.global_step})
    cb.on_log(None, state, TrainerControl(), logs=logs)
    return logs


def test_a_second_resume_takes_over_the_whole_run_token_count_and_losses():
    # Attempt 1 logged steps 2 and 4 (its checkpoint); attempt 2 resumed at 4 and logged 6.
    state = TrainerState(global_step=4, max_steps=8, log_history=[
        {"loss": 2.0, "num_tokens": 100.0, "step": 2}, {"loss": 1.0, "num_tokens": 200.0, "step": 4}])
    cb = callback()
    cb.on_train_begin(None, state, TrainerControl())
    state.global_step = 6
    logs = log(cb, state, {"loss": 0.5, "num_tokens": 90.0})  # TRL restarted its count at 0
    assert logs["num_tokens"] == 290.0 and state.log_history[-1]["num_tokens"] == 290.0

    # Attempt 3 resumes at 6 from a checkpoint holding attempt 2's (patched) history.
    cb = callback()
    state = TrainerState(global_step=6, max_steps=8, log_history=[dict(e) for e in state.log_history])
    cb.on_train_begin(None, state, TrainerControl())
    state.global_step = 8
    assert log(cb, state, {"loss": 0.25, "num_tokens": 50.0})["num_tokens"] == 340.0
    # The Trainer's train_loss covers this attempt's steps only, divided by the global step.
    summary = log(cb, state, {"train_runtime": 1.0, "train_loss": 0.25 * 2 / 8})
    assert summary["train_loss"] == (2.0 * 2 + 1.0 * 2 + 0.5 * 2 + 0.25 * 2) / 8
    assert summary["num_tokens"] == 340.0


def test_a_checkpoint_with_unlogged_steps_averages_the_steps_whose_loss_is_known():
    # An older checkpoint at step 5 whose history ends at step 4: step 5's loss was never logged.
    state = TrainerState(global_step=5, max_steps=7, log_history=[{"loss": 1.0, "num_tokens": 40.0, "step": 4}])
    cb = callback()
    cb.on_train_begin(None, state, TrainerControl())
    state.global_step = 7
    summary = log(cb, state, {"train_runtime": 1.0, "train_loss": 0.5 * 2 / 7})
    assert summary["train_loss"] == (1.0 * 4 + 0.5 * 2) / 6


def test_every_save_is_a_logging_boundary():
    cb = callback()
    state, control = TrainerState(global_step=4, max_steps=10), TrainerControl()
    control.should_save = True
    args = SimpleNamespace(device="cpu")
    assert cb.on_step_end(args, state, control).should_log
    control = TrainerControl()
    assert not cb.on_step_end(args, state, control).should_log

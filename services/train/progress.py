"""Progress reporting and stopping, from inside the Trainer loop.

`ProgressCallback` is a `TrainerCallback`: at each logged step it writes the task's progress
into the job store (step, total, %, loss, learning rate, epoch, grad norm, tokens/s, ETA,
eval metrics) and appends the log line to the task's `training_log.jsonl`; at each checkpoint
it records the folder; at each step end it asks `StopControl` whether to stop, and if so sets
`should_training_stop` and `should_save`, so the Trainer saves a checkpoint and leaves the loop.

Only the main process (rank 0) writes. With several processes the stop decision is agreed by
an all-reduce, so every rank stops (and saves) at the same step.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from services.train import control as control_flags
from services.train.store import RUNNING, TaskStore, now_iso

STOP_CANCEL, STOP_SIGNAL, STOP_FENCED, STOP_PAUSE = "cancel", "signal", "fenced", "pause"


def is_main_process() -> bool:
    """The one rank check: global rank 0 writes (torchrun sets RANK; a single worker has none)."""
    return int(os.environ.get("RANK", "0")) == 0


class StopControl:
    """Why (if at all) the worker must stop: SIGTERM received, the task's cancel flag set in
    the store, or the task no longer ours (a restarted server marked it interrupted)."""

    def __init__(self, store: TaskStore | None, task_id: str, attempt: int, *, check_every: float = 0.3):
        self.store, self.task_id, self.attempt = store, task_id, attempt
        self.check_every = check_every
        self.signalled = False
        self.reason: str | None = None
        self._next_check = 0.0
        # The task's run folder, where PauseTraining and SaveCheckpoint leave their flags
        # (services.train.control); None: no such controls (tests, non-main ranks).
        self.run_dir: Path | None = None

    def install_signal_handlers(self) -> None:
        def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
            self.signalled = True

        signal.signal(signal.SIGTERM, on_term)

    def poll(self, force: bool = False) -> str | None:
        """The stop reason, or None. Reads the store at most every `check_every` seconds."""
        if self.reason is not None:
            return self.reason
        if self.store is not None and (force or time.monotonic() >= self._next_check):
            self._next_check = time.monotonic() + self.check_every
            status, attempt, cancel = self.store.worker_view(self.task_id)
            if status != RUNNING or attempt != self.attempt:
                self.reason = STOP_FENCED
            elif cancel:
                self.reason = STOP_CANCEL
            elif self.run_dir is not None and control_flags.is_requested(self.run_dir, control_flags.PAUSE):
                self.reason = STOP_PAUSE
        if self.reason is None and self.signalled:
            # A SIGTERM is a cancel when the flag is set (it usually is, a moment earlier).
            if self.store is not None:
                _, _, cancel = self.store.worker_view(self.task_id)
                self.reason = STOP_CANCEL if cancel else STOP_SIGNAL
            else:
                self.reason = STOP_SIGNAL
        return self.reason


def _agree(flag: bool, device: Any) -> bool:
    """True on every rank if it is true on any (no-op without torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class _Restored:
    """What a resumed attempt takes over from the attempts before it, read from the
    checkpoint's log_history: the train log windows' loss sum (each window's mean loss times
    its steps), the steps they cover, and TRL's token count at the checkpoint."""

    def __init__(self, loss_sum: float = 0.0, steps: int = 0, tokens: float = 0.0):
        self.loss_sum, self.steps, self.tokens = loss_sum, steps, tokens


def _restored_totals(log_history: list[dict[str, Any]], start_step: int) -> _Restored:
    out, previous = _Restored(), 0
    for entry in log_history:
        step = int(entry.get("step", 0) or 0)
        if step > start_step or "train_runtime" in entry or "loss" not in entry:
            continue
        loss = _number(entry.get("loss"))
        if loss is not None and step > previous:
            out.loss_sum += loss * (step - previous)
            out.steps += step - previous
            previous = step
        tokens = _number(entry.get("num_tokens"))
        if tokens is not None:
            out.tokens = tokens
    return out


class ProgressCallback(TrainerCallback):
    """Writes progress into the store and `log_path`; stops the loop when asked."""

    def __init__(self, store: TaskStore | None, task_id: str, attempt: int, stop: StopControl,
                 log_path: Path | None):
        self.store, self.task_id, self.attempt = store, task_id, attempt
        self.stop = stop
        self.log_path = log_path
        self.stopped_reason: str | None = None
        self.first_step_at: float | None = None  # monotonic
        self.first_step_wall: float | None = None  # time.time()
        self.last_checkpoint: str = ""
        self.main = is_main_process()
        self._t0 = self._last_t = time.monotonic()
        self._start_step = 0
        self._restored = _Restored()
        self._last_tokens = 0.0

    @property
    def first_step_seconds(self) -> float | None:
        """Seconds from train begin to the first step done (None before it)."""
        return None if self.first_step_at is None else self.first_step_at - self._t0

    # -- helpers ---------------------------------------------------------------------------
    def _write_log(self, entry: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def _whole_run(self, state, logs: dict[str, Any]) -> None:
        """Make a resumed attempt's figures whole-run ones, in `logs` (what the callbacks, the
        store and `train()`'s metrics see) and in the log_history entry the Trainer just appended
        for it (what the next checkpoint carries to a later resume).

        - `num_tokens`: TRL counts from 0 in every `train()` call; the restored log_history holds
          the count up to the checkpoint.
        - `train_loss` (the summary): the Trainer divides the losses of this attempt's steps only
          by the global step; it becomes the step-weighted mean of the restored log windows and
          this attempt's steps.
        """
        restored = self._restored
        changes: dict[str, float] = {}
        tokens = _number(logs.get("num_tokens"))
        if tokens is not None and restored.tokens:
            changes["num_tokens"] = tokens + restored.tokens
        if "train_runtime" in logs:
            loss, step = _number(logs.get("train_loss")), int(state.global_step)
            if loss is not None and self._start_step > 0 and step > 0:
                # A checkpoint written before every save was a logging boundary may lack its last
                # steps' losses: the mean is over the steps whose loss is known.
                steps = restored.steps + max(step - self._start_step, 0)
                if steps > 0:
                    changes["train_loss"] = (restored.loss_sum + loss * step) / steps
            if tokens is None and self._last_tokens:
                changes["num_tokens"] = self._last_tokens
        if not changes:
            return
        logs.update(changes)
        last = state.log_history[-1] if state.log_history else None
        if isinstance(last, dict) and last.get("step") == state.global_step and logs.keys() <= last.keys() | {"step"}:
            last.update(changes)

    def _report(self, kind: str, **kwargs) -> None:
        if self.store is not None:
            self.store.report(self.task_id, self.attempt, kind, **kwargs)

    # -- callback events -------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = self._last_t = time.monotonic()
        self._start_step = state.global_step
        self._restored = _restored_totals(state.log_history, self._start_step)
        self._last_tokens = self._restored.tokens
        if self.main:
            total = int(state.max_steps or 0)
            step = int(state.global_step)
            # A status event: the task went from "starting the worker" to training.
            self._report("status", fields={
                "current_step": step, "total_steps": total,
                "progress": 100.0 * step / total if total else 0.0, "epoch": float(state.epoch or 0.0),
            }, message=(f"training resumed at step {step} of {total}" if step else f"training started: {total} steps"))

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step_at is None:
            self.first_step_at, self.first_step_wall = time.monotonic(), time.time()
        reason = self.stop.poll() if self.main else (
            "signal" if self.stop.signalled else None)
        if _agree(reason is not None, args.device):
            self.stopped_reason = reason or self.stop.poll(force=True) or STOP_SIGNAL
            control.should_training_stop = True
            control.should_save = True
            control.should_log = True
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_log = True  # the last step's loss is reported whatever logging_steps is
        # SaveCheckpoint: save at this step and keep training (every rank saves together).
        save_now = bool(self.main and self.stop.run_dir is not None
                        and control_flags.take(self.stop.run_dir, control_flags.SAVE))
        if _agree(save_now, args.device):
            control.should_save = True
        if control.should_save:
            # Every checkpoint lies on a logging boundary (the Trainer logs before it saves in the
            # same step): no step's loss is left unlogged in a checkpoint's log_history, and the
            # first window after a resume is the one an uninterrupted run logs.
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        self._whole_run(state, logs)
        if not self.main:
            return
        now = time.monotonic()
        step, total = int(state.global_step), int(state.max_steps or 0)
        numbers = {k: v for k, v in ((k, _number(v)) for k, v in logs.items()) if v is not None}
        entry = {"step": step, "timestamp": now_iso(), **numbers}
        where = {"current_step": step, "total_steps": total, "progress": 100.0 * step / total if total else 0.0}
        if "eval_loss" in numbers:
            entry["kind"] = "eval"
            self._write_log(entry)
            self._report("eval", fields=where, metrics=numbers,
                         message=f"eval_loss {numbers['eval_loss']:.4f} at step {step}")
            return
        if "train_runtime" in numbers:
            entry["kind"] = "summary"
            self._write_log(entry)
            self._report("progress", metrics=numbers, event=False)
            return
        entry["kind"] = "train"
        fields: dict[str, Any] = dict(where)
        metrics = dict(numbers)
        tokens = numbers.get("num_tokens")
        if tokens is not None:
            elapsed = max(now - self._last_t, 1e-9)
            tps = max(tokens - self._last_tokens, 0.0) / elapsed
            self._last_tokens, self._last_t = tokens, now
            fields["tokens_per_second"] = metrics["tokens_per_second"] = tps
            entry["tokens_per_second"] = tps
        done = step - self._start_step
        if done > 0 and total:
            eta = (now - self._t0) / done * max(total - step, 0)
            fields["eta_seconds"] = metrics["eta_seconds"] = eta
            entry["eta_seconds"] = eta
        for name in ("loss", "learning_rate", "epoch", "grad_norm"):
            if name in numbers:
                fields[name] = numbers[name]
        self._write_log(entry)
        loss = numbers.get("loss")
        self._report("progress", fields=fields, metrics=metrics,
                     message=f"step {step}/{total}" + (f", loss {loss:.4f}" if loss is not None else ""))

    def on_save(self, args, state, control, **kwargs):
        if not self.main:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.last_checkpoint = str(folder)
        self._report("checkpoint", last_checkpoint=str(folder),
                     message=f"checkpoint saved at step {state.global_step}: {folder.name}")

"""Controls of a running task, and what its checkpoints hold (issue 19).

Save-now and pause are requests from the server to a worker in another process. They are
flag files in the task's run folder (`<workspace>/runs/<task_id>/control/`), created
atomically by the server and polled by the worker's callbacks (`progress.py`) between
optimizer steps:

- `save` — SaveCheckpoint: the worker takes (removes) the flag at its next step end and
  sets `control.should_save`, so the Trainer saves a checkpoint there and keeps training.
- `pause` — PauseTraining: `StopControl.poll` reports STOP_PAUSE; the worker stops as on a
  cancel (checkpoint at that step), exits, and the task ends as `paused`.

ResumeTraining clears both before the task is queued again.

`checkpoint_infos` reads a task's checkpoint folders: step, time, size, and the train and
eval figures of the Trainer's `log_history` up to that step (what ListCheckpoints answers).

Plain Python, no torch, no grpc.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from services.common.timestamps import iso_of
from services.train.checkpoints import STATE_FILE, checkpoint_step, list_checkpoints

SAVE, PAUSE = "save", "pause"


def control_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "control"


def request(run_dir: Path, name: str) -> None:
    """Raise the flag `name` (idempotent; the file appears whole or not at all)."""
    folder = control_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(datetime.now(timezone.utc).isoformat(), encoding="utf-8")
    os.replace(tmp, folder / name)


def is_requested(run_dir: Path, name: str) -> bool:
    return (control_dir(run_dir) / name).is_file()


def take(run_dir: Path, name: str) -> bool:
    """Lower the flag `name`; True when it was raised (only one taker wins)."""
    try:
        (control_dir(run_dir) / name).unlink()
    except FileNotFoundError:
        return False
    return True


def clear(run_dir: Path) -> None:
    for name in (SAVE, PAUSE):
        take(run_dir, name)


# -- checkpoint contents -------------------------------------------------------------------------

@dataclass
class CheckpointInfo:
    step: int
    created_at: str
    path: str
    size_bytes: int
    train_loss: float | None = None
    mean_token_accuracy: float | None = None
    eval_loss: float | None = None
    eval_mean_token_accuracy: float | None = None
    best: bool = False


def _size(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            pass
    return total


def _latest(log_history: list[dict[str, Any]], step: int, key: str) -> float | None:
    found = None
    for entry in log_history:
        value = entry.get(key)
        if int(entry.get("step", 0) or 0) <= step and isinstance(value, (int, float)) and not isinstance(value, bool):
            found = float(value)
    return found


def checkpoint_infos(checkpoint_parent: Path) -> list[CheckpointInfo]:
    """The complete checkpoints under `checkpoint_parent`, oldest step first."""
    out: list[CheckpointInfo] = []
    best_name = ""
    folders = list_checkpoints(checkpoint_parent)
    for folder in folders:
        try:
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            mtime = (folder / STATE_FILE).stat().st_mtime
        except (OSError, ValueError):
            continue  # removed by the Trainer's rotation while we read it
        step = int(state.get("global_step") or checkpoint_step(folder) or 0)
        history = state.get("log_history") or []
        if state.get("best_model_checkpoint"):
            best_name = Path(state["best_model_checkpoint"]).name  # the latest state knows the best
        out.append(CheckpointInfo(
            step=step, created_at=iso_of(mtime), path=str(folder), size_bytes=_size(folder),
            train_loss=_latest(history, step, "loss"),
            mean_token_accuracy=_latest(history, step, "mean_token_accuracy"),
            eval_loss=_latest(history, step, "eval_loss"),
            eval_mean_token_accuracy=_latest(history, step, "eval_mean_token_accuracy"),
        ))
    for info in out:
        info.best = bool(best_name) and Path(info.path).name == best_name
    return out

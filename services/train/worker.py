"""The training worker: one OS process per task (per rank under torchrun).

    python -m services.train.worker <task_id> --workspace <ws> --attempt <n> [--config <json>]

It reads its task from the job store, trains it with the recipe, and writes progress, events
and the final state (`completed`, `cancelled`, `interrupted`) into the store. Only rank 0
writes. On an error it records its own account (`worker_error`), prints the traceback to
stderr (the task's worker.log) and exits 1; the server then marks the task failed with both.

SIGTERM means "stop at the next step and save a checkpoint": `cancelled` when the task's
cancel flag is set, `interrupted` otherwise (the service shutting down, or dying: the worker
asks the kernel for SIGTERM when its parent goes). The server kills it if it does not stop
within `train.cancel_grace_seconds`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from services.common import proc
from services.common.timestamps import parse_iso

log = logging.getLogger("wintrain.train.worker")
PARENT_ENV = "WINTRAIN_WORKER_PARENT_PID"


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies (a server killed with -9 leaves no
    orphan training on): checkpoint, then `interrupted`."""
    expected = os.environ.get(PARENT_ENV)
    parent = int(expected) if expected and "RANK" not in os.environ else None
    proc.die_with_parent(signal.SIGTERM, parent_pid=parent)  # raised at once if already gone


def stop_control(store, task_id: str, attempt: int, early: dict[str, bool]):
    """The run's StopControl, taking over from the early SIGTERM handler: a SIGTERM seen
    before (`early`) or arriving while the handler is swapped is kept, never reset."""
    from services.train.progress import StopControl

    stop = StopControl(store, task_id, attempt)
    stop.install_signal_handlers()
    stop.signalled = stop.signalled or early["term"]
    return stop


def load_worker_config(path: str | None):
    from services.common.config import Config, load_config

    if not path:
        return load_config()
    saved = json.loads(Path(path).read_text(encoding="utf-8"))
    config = Config(saved["data"], Path(saved["base_dir"]))
    job_store = os.environ.get("WINTRAIN__STORAGE__JOB_STORE")  # set by the scheduler, never on disk
    return config.with_overrides({"storage.job_store": job_store}) if job_store else config


def main(argv: list[str] | None = None) -> int:
    # First thing: a SIGTERM during the (seconds long) imports is a stop request, not death.
    early = {"term": False}
    signal.signal(signal.SIGTERM, lambda signum, frame: early.__setitem__("term", True))
    parser = argparse.ArgumentParser(prog="python -m services.train.worker")
    parser.add_argument("task_id")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--attempt", type=int, default=0, help="attempt number the server claimed (0: current)")
    parser.add_argument("--config", help="service config as JSON (written by the server)")
    args = parser.parse_args(argv)

    from services.train.progress import STOP_CANCEL, STOP_FENCED, STOP_PAUSE, is_main_process
    from services.train.store import CANCELLED, COMPLETED, INTERRUPTED, PAUSED, RUNNING, open_store, run_dir

    main_rank = is_main_process()
    config = load_worker_config(args.config)
    store = open_store(config, workspace=args.workspace)  # the server's storage.job_store
    task = store.get(args.task_id)
    if task is None:
        print(f"worker: no task {args.task_id} in the job store of {args.workspace}", file=sys.stderr)
        return 2
    attempt = args.attempt or task.attempt
    stop = stop_control(store if main_rank else None, task.task_id, attempt, early)
    if main_rank:  # PauseTraining and SaveCheckpoint flags (services.train.control)
        stop.run_dir = run_dir(args.workspace, task.task_id)
    die_with_parent()
    if task.status != RUNNING or task.attempt != attempt:
        print(f"worker: task {task.task_id} is {task.status} (attempt {task.attempt}), not running "
              f"attempt {attempt}; nothing to do", file=sys.stderr)
        return 0

    from services.common.logging_setup import setup_logging

    setup_logging("train-worker", "INFO")
    from services.train import checkpoints

    checkpoints.enforce_weights_only()
    from services.train.recipe import RunSpec, run
    from services.train.settings import TrainingSettings

    r = task.resolved
    spec = RunSpec(
        task_id=task.task_id, attempt=attempt, strategy=task.strategy,
        settings=TrainingSettings.from_plain(task.config),
        dataset=Path(r["dataset"]), output_dir=Path(r["output_dir"]), model=Path(r["model"]),
        run_dir=run_dir(args.workspace, task.task_id),
        eval_dataset=Path(r["eval_dataset"]) if r.get("eval_dataset") else None,
        resume_from=Path(task.resume_from) if task.resume_from else None,
    )
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    if main_rank:  # this task owns the folder now: what an earlier killed save left is stale
        checkpoints.remove_partial_outputs(spec.output_dir)
    try:
        result = run(spec, config, store=store, stop=stop)
    except BaseException as exc:  # noqa: BLE001 - everything is reported, then re-raised as exit 1
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        if main_rank:
            text = f"{type(exc).__name__}: {exc}".strip()
            store.note_worker_error(task.task_id, attempt, text)
            checkpoints.remove_partial_outputs(spec.output_dir)
        return 1
    if not main_rank:
        return 0

    metrics = dict(result.metrics)
    if result.first_step_seconds is not None:
        metrics["first_step_seconds"] = result.first_step_seconds
    if result.first_step_wall is not None and task.started_at:
        # Start-to-first-step latency: worker spawned (task started) -> first optimizer step done.
        metrics["seconds_to_first_step"] = result.first_step_wall - parse_iso(task.started_at)
    where = f"; last checkpoint: {Path(result.last_checkpoint).name}" if result.last_checkpoint else ""
    if result.outcome == "completed":
        store.finish(task.task_id, COMPLETED, attempt=attempt,
                     message=f"completed: {result.step} steps; saved to {spec.output_dir}"
                             + (f"; {result.note}" if result.note else ""),
                     fields={"progress": 100.0, "current_step": result.step, "total_steps": result.total_steps},
                     metrics=metrics)
    elif result.outcome == STOP_CANCEL:
        store.finish(task.task_id, CANCELLED, attempt=attempt, metrics=metrics,
                     message=f"cancelled at step {result.step}{where}")
    elif result.outcome == STOP_PAUSE:
        store.finish(task.task_id, PAUSED, attempt=attempt, metrics=metrics,
                     message=f"paused at step {result.step}{where}; resume to continue")
    elif result.outcome == STOP_FENCED:
        print(f"worker: task {task.task_id} is no longer running attempt {attempt}; stopped", file=sys.stderr)
    else:
        reason = f"stopped by a signal at step {result.step}{where}; resume to continue"
        store.finish(task.task_id, INTERRUPTED, attempt=attempt, message=reason, error_message=reason,
                     metrics=metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())

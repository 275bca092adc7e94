"""The training service's domain API (no grpc): accept, read, list, watch, cancel and resume
tasks. The gRPC servicer in `server.py` only converts protos to these calls and back."""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from pathlib import Path
from typing import AsyncIterator

from services.common.config import Config
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.paths import resolve_allowed_path
from services.train import checkpoints, control
from services.train.preflight import (AcceptedTask, StartRequest, check_output_dir, check_start_request,
                                      output_in_use)
from services.train.scheduler import Scheduler
from services.train.store import (CANCELLED, PAUSED, RESUMABLE, RUNNING, EventRecord, OutputInUse, TaskRecord,
                                  open_store, run_dir)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, _, seq = raw.partition(":")
        if version != "v1":
            raise ValueError(raw)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.for_field("page_token", "is not a token returned by ListTrainingTasks") from None


class TrainingJobs:
    """Tasks as persistent jobs: the store, the scheduler and the pre-flight checks."""

    def __init__(self, config: Config, *, watch_poll_seconds: float | None = None):
        self.config = config
        self.store = open_store(config)
        self.store.bind_workspace(config.workspace)  # replicas must share one workspace
        self.scheduler = Scheduler(self.store, config)
        self.watch_poll_seconds = float(watch_poll_seconds or config.get("train.watch_poll_seconds", 0.25) or 0.25)

    # -- lifecycle -------------------------------------------------------------------------
    def recover(self) -> list[str]:
        return self.scheduler.recover()

    def start_scheduler(self) -> None:
        self.scheduler.start()

    async def close(self) -> None:
        await self.scheduler.shutdown()
        self.store.close()

    # -- tasks -----------------------------------------------------------------------------
    def _task(self, task_id: str) -> TaskRecord:
        if not task_id or not task_id.strip():
            raise InvalidArgument.for_field("task_id", "must not be empty")
        task = self.store.get(task_id)
        if task is None:
            raise NotFound(f"task_id: no training task {task_id!r}", [("task_id", "unknown task")])
        return task

    async def start(self, request: StartRequest) -> tuple[TaskRecord, int]:
        """Pre-flight, then store the task (pending) and wake the scheduler. Returns the
        stored task and its queue position."""
        accepted: AcceptedTask = await asyncio.to_thread(check_start_request, request, self.config, self.store)
        task_id = str(uuid.uuid4())
        resume = accepted.resolved["resume_from"]
        what = "preference pairs" if request.strategy == "dpo" else "training conversations"
        message = f"queued ({accepted.train_samples} {what}" + (
            f", {accepted.eval_samples} for evaluation)" if accepted.eval_samples else ")")
        if resume:
            message += f"; continues from {Path(resume).name}"
        try:
            record = self.store.create(
                task_id=task_id, strategy=request.strategy, dataset_path=request.dataset_path,
                eval_dataset_path=request.eval_dataset_path, output_dir=request.output_dir,
                config=request.settings.as_plain(), resolved=accepted.resolved, message=message, resume_from=resume,
            )
        except OutputInUse as exc:  # another start took the folder while this one was in pre-flight
            raise output_in_use(exc) from None
        self.scheduler.wake()
        return record, max(self.store.queue_position(task_id), 0)

    def get(self, task_id: str) -> tuple[TaskRecord, int]:
        task = self._task(task_id)
        return task, self.store.queue_position(task_id)

    def list_tasks(self, page_size: int, page_token: str) -> tuple[list[TaskRecord], str, dict[str, int]]:
        if page_size < 0:
            raise InvalidArgument.for_field("page_size", "must be >= 0")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = decode_page_token(page_token) if page_token else None
        tasks = self.store.list_page(size + 1, before)
        more = len(tasks) > size
        tasks = tasks[:size]
        token = encode_page_token(tasks[-1].seq) if more and tasks else ""
        queue = {task_id: i for i, task_id in enumerate(self.store.queue())}
        return tasks, token, queue

    async def cancel(self, task_id: str) -> TaskRecord:
        task = self._task(task_id)
        if task.status == PAUSED and self.store.finish(task_id, CANCELLED, from_statuses=(PAUSED,),
                                                        message="cancelled while paused"):
            return self._task(task_id)
        outcome = self.store.request_cancel(task_id)
        if outcome == "ended":
            task = self._task(task_id)
            raise FailedPrecondition(f"task {task_id} has already ended ({task.status})",
                                     [("task_id", f"task is {task.status}")])
        if outcome == "signalled":
            self.scheduler.signal_cancel(task_id)
        self.scheduler.wake()
        return self._task(task_id)

    async def resume(self, task_id: str, checkpoint: str) -> TaskRecord:
        task = self._task(task_id)
        if task.status not in RESUMABLE:
            raise FailedPrecondition(
                f"task {task_id} is {task.status}; only failed, cancelled or interrupted tasks can be resumed",
                [("task_id", f"task is {task.status}")])
        if checkpoint:
            folder = resolve_allowed_path(checkpoint, self.config, field="checkpoint", must_exist=True, expect="dir")
            try:
                checkpoints.check_checkpoint_files(folder)
            except checkpoints.CheckpointError as exc:
                raise InvalidArgument.for_field("checkpoint", str(exc)) from None
        else:
            folder = checkpoints.latest_checkpoint(run_dir(self.config.workspace, task_id) / "checkpoints")
            if folder is None and task.resume_from and Path(task.resume_from).is_dir():
                folder = Path(task.resume_from)  # it failed before saving one of its own
            if folder is None and task.status == PAUSED:
                folder = Path("")  # paused before its first step: it starts over
            if folder is None:
                raise FailedPrecondition(f"task {task_id} has no checkpoint to resume from",
                                         [("task_id", "no checkpoint")])
        await asyncio.to_thread(check_output_dir, Path(task.resolved["output_dir"]), protected=[],
                                store=self.store, own_task=task_id)
        control.clear(run_dir(self.config.workspace, task_id))
        try:
            requeued = self.store.requeue(task_id, resume_from=str(folder) if folder.name else "",
                                          message=f"queued again to resume from {folder.name}" if folder.name
                                          else "queued again (paused before its first checkpoint)")
        except OutputInUse as exc:
            raise output_in_use(exc) from None
        if not requeued:
            current = self._task(task_id)
            raise FailedPrecondition(f"task {task_id} is {current.status}", [("task_id", f"task is {current.status}")])
        self.scheduler.wake()
        return self._task(task_id)

    # -- controls of a running task (issue 19) ---------------------------------------------
    def _running(self, task_id: str, what: str) -> TaskRecord:
        task = self._task(task_id)
        if task.status != RUNNING or task.cancel_requested:
            state = "being cancelled" if task.status == RUNNING else task.status
            raise FailedPrecondition(f"task {task_id} is {state}; only a running task can be {what}",
                                     [("task_id", f"task is {state}")])
        return task

    async def save_checkpoint(self, task_id: str) -> TaskRecord:
        """Ask the worker to save a checkpoint at its next step and keep training."""
        self._running(task_id, "checkpointed")
        control.request(run_dir(self.config.workspace, task_id), control.SAVE)
        return self._task(task_id)

    async def pause(self, task_id: str) -> TaskRecord:
        """Ask the worker to stop at its next step with a checkpoint; the task ends `paused`."""
        self._running(task_id, "paused")
        control.request(run_dir(self.config.workspace, task_id), control.PAUSE)
        return self._task(task_id)

    def list_checkpoints(self, task_id: str) -> list[control.CheckpointInfo]:
        self._task(task_id)
        return control.checkpoint_infos(run_dir(self.config.workspace, task_id) / "checkpoints")

    def list_events(self, task_id: str, after: int, page_size: int) -> tuple[list[EventRecord], bool]:
        """Stored events after sequence `after`, oldest first, and whether more follow."""
        if after < 0:
            raise InvalidArgument.for_field("after_sequence", "must be >= 0")
        if page_size < 0:
            raise InvalidArgument.for_field("page_size", "must be >= 0")
        self._task(task_id)
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        events = self.store.events_after(task_id, after, size + 1)
        return events[:size], len(events) > size

    async def watch(self, task_id: str, from_sequence: int,
                    replay: bool = False) -> AsyncIterator[TaskRecord | EventRecord]:
        """A snapshot (when `from_sequence` is 0 and not `replay`), then every stored event
        after the last one seen (all of them with `replay`), until the task is in a terminal
        state with no event left to send."""
        if from_sequence < 0:
            raise InvalidArgument.for_field("from_sequence", "must be >= 0")
        if replay and from_sequence:
            raise InvalidArgument.for_field(
                "replay", "cannot be combined with from_sequence (replay starts at the first event)")
        task = self._task(task_id)
        if replay:
            last = 0
        elif from_sequence == 0:
            yield task
            last = task.last_sequence
        else:
            last = from_sequence
        while True:
            events = self.store.events_after(task_id, last)
            for event in events:
                yield event
                last = event.sequence
            if events:
                continue
            current = self.store.get(task_id)
            if current is None or (current.is_terminal and last >= current.last_sequence):
                return
            await self.store.wait_for_events(task_id, last, self.watch_poll_seconds)

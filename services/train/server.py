"""TrainService over gRPC: a thin servicer that converts protos to plain values, calls
`TrainingJobs`, and converts the results back. `register(runtime)` wires it into the shared
server bootstrap; the scheduler starts with the server and stops (checkpointing its workers)
with it."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from google.protobuf import json_format

from services.common.server import ServiceRuntime, service_full_name
from services.train.preflight import StartRequest
from services.train.service import TrainingJobs
from services.train.settings import settings_from_request
from services.train.store import EventRecord, TaskRecord, enum_words
from wintrain.train.v1 import train_pb2, train_pb2_grpc

M = TypeVar("M")

_STRATEGY_TO_NAME = enum_words(train_pb2.Strategy.DESCRIPTOR)


def _enum_numbers(enum) -> dict[str, int]:
    """JSON word -> number of an enum (the inverse of store.enum_words)."""
    return {word: number for number, word in enum_words(enum).items()}


def to_proto(message_cls: type[M], values: dict[str, Any]) -> M:
    """A `message_cls` message from plain values by proto field name, through json_format:
    enum fields may hold their JSON word (`"running"`, `"trl"`; an unknown word is the unset
    value), names that are not fields of the message are left out."""
    known: dict[str, Any] = {}
    for fd in message_cls.DESCRIPTOR.fields:
        if fd.name in values:
            value = values[fd.name]
            if fd.enum_type is not None and isinstance(value, str):
                value = _enum_numbers(fd.enum_type).get(value, 0)
            known[fd.name] = value
    return json_format.ParseDict(known, message_cls(), ignore_unknown_fields=True)


def task_to_proto(task: TaskRecord, queue_position: int = -1) -> train_pb2.TrainingTask:
    """Every TaskRecord field and progress number named like a TrainingTask field."""
    return to_proto(train_pb2.TrainingTask, {**vars(task), **task.progress_state(),
                                             "queue_position": max(queue_position, 0)})


def event_to_proto(item: TaskRecord | EventRecord) -> train_pb2.TrainingEvent:
    """A stored event, or a task's current state as the snapshot that opens a watch."""
    if isinstance(item, TaskRecord):
        return to_proto(train_pb2.TrainingEvent, {
            **item.progress_state(), "sequence": 0, "task_id": item.task_id, "kind": train_pb2.EVENT_KIND_SNAPSHOT,
            "status": item.status, "message": item.message,
            "timestamp": item.completed_at or item.started_at or item.created_at})
    return to_proto(train_pb2.TrainingEvent, {
        **item.data, "sequence": item.sequence, "task_id": item.task_id, "kind": item.kind, "status": item.status,
        "message": item.message, "timestamp": item.timestamp})


class TrainServicer(train_pb2_grpc.TrainServiceServicer):
    def __init__(self, jobs: TrainingJobs):
        self.jobs = jobs

    async def StartTraining(self, request, context):
        start = StartRequest(
            strategy=_STRATEGY_TO_NAME.get(request.strategy, ""),
            dataset_path=request.dataset_path,
            output_dir=request.output_dir,
            settings=settings_from_request(request.config if request.HasField("config") else None,
                                           lora=request.strategy == train_pb2.STRATEGY_LORA),
            eval_dataset_path=request.eval_dataset_path if request.HasField("eval_dataset_path") else "",
        )
        task, position = await self.jobs.start(start)
        return train_pb2.StartTrainingResponse(
            task_id=task.task_id, status=train_pb2.TASK_STATUS_PENDING, message=task.message,
            created_at=task.created_at, queue_position=position,
        )

    async def GetTrainingStatus(self, request, context):
        task, position = self.jobs.get(request.task_id)
        return task_to_proto(task, position)

    async def ListTrainingTasks(self, request, context):
        tasks, token, queue = self.jobs.list_tasks(request.page_size, request.page_token)
        return train_pb2.ListTrainingTasksResponse(
            tasks=[task_to_proto(t, queue.get(t.task_id, -1)) for t in tasks], next_page_token=token)

    async def WatchTraining(self, request, context):
        async for item in self.jobs.watch(request.task_id, request.from_sequence, request.replay):
            yield event_to_proto(item)

    async def CancelTraining(self, request, context):
        return task_to_proto(await self.jobs.cancel(request.task_id))

    async def ResumeTraining(self, request, context):
        task = await self.jobs.resume(request.task_id, request.checkpoint)
        return task_to_proto(task, self.jobs.store.queue_position(task.task_id))

    async def ListCheckpoints(self, request, context):
        infos = await asyncio.to_thread(self.jobs.list_checkpoints, request.task_id)
        return train_pb2.ListCheckpointsResponse(checkpoints=[
            train_pb2.Checkpoint(**{k: v for k, v in vars(info).items() if v is not None}) for info in infos])

    async def SaveCheckpoint(self, request, context):
        return task_to_proto(await self.jobs.save_checkpoint(request.task_id))

    async def PauseTraining(self, request, context):
        return task_to_proto(await self.jobs.pause(request.task_id))

    async def ListTrainingEvents(self, request, context):
        events, more = self.jobs.list_events(request.task_id, request.after_sequence, request.page_size)
        return train_pb2.ListTrainingEventsResponse(events=[event_to_proto(e) for e in events], has_more=more)


def register(runtime: ServiceRuntime) -> list[str]:
    """Open the job store, mark tasks a dead server left running as interrupted, start the
    scheduler (queued tasks run again), and add the servicer."""
    jobs = TrainingJobs(runtime.config)
    jobs.recover()
    jobs.scheduler.on_store_health = runtime.set_serving  # NOT_SERVING while the database is away
    jobs.start_scheduler()
    runtime.train_jobs = jobs  # type: ignore[attr-defined] - tests and shutdown reach it here
    train_pb2_grpc.add_TrainServiceServicer_to_server(TrainServicer(jobs), runtime.server)
    runtime.on_shutdown(jobs.close)
    # train.webhooks: signed POSTs when a task ends (services/train/webhooks.py).
    from services.train.webhooks import WebhookDispatcher

    hooks = WebhookDispatcher(jobs.store, runtime.config, lambda task: {
        **json_format.MessageToDict(task_to_proto(task), preserving_proto_field_name=True),
        "status": task.status, "strategy": task.strategy})
    hooks.start()
    runtime.on_shutdown(hooks.close)
    return [service_full_name(train_pb2, "TrainService")]


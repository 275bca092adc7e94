"""TrainService over gRPC: a thin servicer that converts protos to plain values, calls
`TrainingJobs`, and converts the results back. `register(runtime)` wires it into the shared
server bootstrap; the scheduler starts with the server and stops (checkpointing its workers)
with it."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from services.common.server import ServiceRuntime, service_full_name
from services.train.preflight import StartRequest
from services.train.service import TrainingJobs
from services.train.settings import settings_from_request
from services.train.store import EventRecord, TaskRecord
from wintrain.train.v1 import train_pb2, train_pb2_grpc

_STRATEGY_TO_NAME = {train_pb2.STRATEGY_TRL: "trl", train_pb2.STRATEGY_LORA: "lora", train_pb2.STRATEGY_DPO: "dpo"}
_NAME_TO_STRATEGY = {v: k for k, v in _STRATEGY_TO_NAME.items()}
_STATUS = {
    "pending": train_pb2.TASK_STATUS_PENDING, "running": train_pb2.TASK_STATUS_RUNNING,
    "completed": train_pb2.TASK_STATUS_COMPLETED, "failed": train_pb2.TASK_STATUS_FAILED,
    "cancelled": train_pb2.TASK_STATUS_CANCELLED, "interrupted": train_pb2.TASK_STATUS_INTERRUPTED,
}
_KIND = {
    "status": train_pb2.EVENT_KIND_STATUS, "progress": train_pb2.EVENT_KIND_PROGRESS,
    "eval": train_pb2.EVENT_KIND_EVAL, "checkpoint": train_pb2.EVENT_KIND_CHECKPOINT,
}


def task_to_proto(task: TaskRecord, queue_position: int = -1) -> train_pb2.TrainingTask:
    config = train_pb2.TrainingConfig()
    json_format.ParseDict(task.config, config, ignore_unknown_fields=True)
    return train_pb2.TrainingTask(
        task_id=task.task_id, status=_STATUS[task.status],
        strategy=_NAME_TO_STRATEGY.get(task.strategy, train_pb2.STRATEGY_UNSPECIFIED),
        dataset_path=task.dataset_path, output_dir=task.output_dir, config=config,
        created_at=task.created_at, started_at=task.started_at, completed_at=task.completed_at,
        error_message=task.error_message, progress=task.progress, current_step=task.current_step,
        total_steps=task.total_steps, loss=task.loss, metrics=task.metrics,
        learning_rate=task.learning_rate, epoch=task.epoch, grad_norm=task.grad_norm,
        tokens_per_second=task.tokens_per_second, eta_seconds=task.eta_seconds,
        queue_position=max(queue_position, 0), eval_dataset_path=task.eval_dataset_path,
        last_checkpoint=task.last_checkpoint, message=task.message,
    )


def _event_fields(data: dict[str, Any]) -> dict[str, Any]:
    return dict(
        progress=float(data.get("progress", 0.0)), current_step=int(data.get("current_step", 0)),
        total_steps=int(data.get("total_steps", 0)), loss=float(data.get("loss", 0.0)),
        learning_rate=float(data.get("learning_rate", 0.0)), epoch=float(data.get("epoch", 0.0)),
        grad_norm=float(data.get("grad_norm", 0.0)), tokens_per_second=float(data.get("tokens_per_second", 0.0)),
        eta_seconds=float(data.get("eta_seconds", 0.0)),
        metrics={k: float(v) for k, v in (data.get("metrics") or {}).items()},
    )


def event_to_proto(item: TaskRecord | EventRecord) -> train_pb2.TrainingEvent:
    if isinstance(item, TaskRecord):
        return train_pb2.TrainingEvent(
            sequence=0, task_id=item.task_id, kind=train_pb2.EVENT_KIND_SNAPSHOT, status=_STATUS[item.status],
            message=item.message, timestamp=item.completed_at or item.started_at or item.created_at,
            **_event_fields({**item.state()}),
        )
    return train_pb2.TrainingEvent(
        sequence=item.sequence, task_id=item.task_id, kind=_KIND.get(item.kind, train_pb2.EVENT_KIND_UNSPECIFIED),
        status=_STATUS[item.status], message=item.message, timestamp=item.timestamp, **_event_fields(item.data),
    )


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


def register(runtime: ServiceRuntime) -> list[str]:
    """Open the job store, mark tasks a dead server left running as interrupted, start the
    scheduler (queued tasks run again), and add the servicer."""
    jobs = TrainingJobs(runtime.config)
    jobs.recover()
    jobs.start_scheduler()
    runtime.train_jobs = jobs  # type: ignore[attr-defined] - tests and shutdown reach it here
    train_pb2_grpc.add_TrainServiceServicer_to_server(TrainServicer(jobs), runtime.server)
    runtime.on_shutdown(jobs.close)
    return [service_full_name(train_pb2, "TrainService")]


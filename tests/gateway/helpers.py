"""Helpers for gateway tests: the gateway served by a real uvicorn in a background thread,
and fake backend servicers (for unit tests of the transcoder only; the contract test uses the
real services)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone

import grpc
import uvicorn

from gateway.app import create_app
from services.common.config import SERVICE_NAMES, Config
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.common.metadata import REQUEST_ID_KEY
from services.common.rpc_status import to_grpc_status
from services.common.server import service_full_name
from wintrain.data.v1 import data_pb2, data_pb2_grpc
from wintrain.inference.v1 import inference_pb2, inference_pb2_grpc
from wintrain.train.v1 import train_pb2, train_pb2_grpc


class GatewayServer:
    """`create_app(config)` served by uvicorn on a free port in a background thread."""

    def __init__(self, config: Config, **app_kwargs):
        self.app = create_app(config, **app_kwargs)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on", ws="none",
        ))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> "GatewayServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def point_gateway_at(config: Config, ports: dict[str, int]) -> Config:
    """A config whose backends are the given ports (others keep theirs)."""
    return config.with_overrides({f"services.{name}.port": port for name, port in ports.items()})


def gateway_over(config: Config, servers: dict) -> GatewayServer:
    """A gateway whose backends are these in-process servers ({name: InProcessServer})."""
    return GatewayServer(point_gateway_at(config, {name: server.port for name, server in servers.items()}))


def all_at(config: Config, port: int) -> Config:
    return point_gateway_at(config, {name: port for name in SERVICE_NAMES})


# --------------------------------------------------------------------------- fakes
class FakeState:
    """What the fake servicers saw, for assertions (thread-safe events)."""

    def __init__(self):
        self.stream_cancelled = threading.Event()
        self.stream_started = threading.Event()
        self.tokens_sent = 0
        self.request_ids: list[str] = []


async def abort(context, code: str, message: str, violations=()) -> None:
    await context.abort_with_status(to_grpc_status(code, message, violations))


def _rid(context) -> str:
    for item in context.invocation_metadata() or ():
        if item.key == REQUEST_ID_KEY:
            return item.value
    return ""


class FakeData(data_pb2_grpc.DataServiceServicer):
    def __init__(self, state: FakeState):
        self.state = state

    async def ValidateDataset(self, request, context):
        path = request.file_path
        self.state.request_ids.append(_rid(context))
        if path.startswith("error:"):
            code = path.split(":", 1)[1]
            violations = [("file_path", f"bad because {code}")] if code == "INVALID_ARGUMENT" else []
            await abort(context, code, f"fake {code}", violations)
        if path.startswith("sleep:"):
            await asyncio.sleep(float(path.split(":", 1)[1]))
        if path == "crash":
            raise RuntimeError("unexpected")
        return data_pb2.ValidateDatasetResponse(
            is_valid=not path.startswith("invalid"), total_samples=5, valid_samples=5,
            error_messages=[] if not path.startswith("invalid") else ["line 1: bad"],
            detected_format=_rid(context),
            stats=data_pb2.DatasetStats(messages_per_role={"user": 5}, exact_duplicates=0),
        )

    async def ProcessDataset(self, request, context):
        return data_pb2.ProcessDatasetResponse(
            output_dir=request.output_dir,
            total_samples=int(request.overwrite),
            train_samples=request.split_config.seed if request.HasField("split_config") else -1,
            detected_format=request.format_type if request.HasField("format_type") else "<unset>",
            files=[data_pb2.OutputFile(path=f"{request.output_dir}/train.json", rows=3, size_bytes=2**40 + 1)],
            dropped={"invalid": 2},
        )


def _task(task_id: str, status=train_pb2.TASK_STATUS_RUNNING) -> train_pb2.TrainingTask:
    return train_pb2.TrainingTask(
        task_id=task_id, status=status, strategy=train_pb2.STRATEGY_LORA, dataset_path="d.jsonl",
        output_dir="out", config=train_pb2.TrainingConfig(max_steps=10, learning_rate=2e-4),
        progress=50.0, current_step=5, total_steps=10, loss=1.25, metrics={"learning_rate": 1e-4},
        created_at=datetime.now(timezone.utc).isoformat(),
    )


class FakeTrain(train_pb2_grpc.TrainServiceServicer):
    def __init__(self, state: FakeState):
        self.state = state

    async def StartTraining(self, request, context):
        cfg = request.config
        return train_pb2.StartTrainingResponse(
            task_id="t-1", status=train_pb2.TASK_STATUS_PENDING,
            message=f"{train_pb2.Strategy.Name(request.strategy)} lr={cfg.learning_rate} steps={cfg.max_steps} "
                    f"targets={','.join(cfg.lora_config.target_modules)}",
            created_at="2024-01-01T00:00:00+00:00",
        )

    async def GetTrainingStatus(self, request, context):
        if request.task_id == "missing":
            raise NotFound(f"task_id: no task {request.task_id!r}")
        return _task(request.task_id)

    async def ListTrainingTasks(self, request, context):
        return train_pb2.ListTrainingTasksResponse(
            tasks=[_task("a"), _task("b", train_pb2.TASK_STATUS_COMPLETED)],
            next_page_token=f"after-{request.page_size}-{request.page_token}",
        )

    async def WatchTraining(self, request, context):
        if request.task_id == "missing":
            raise NotFound("task_id: no such task")
        for i in range(3):
            yield train_pb2.TrainingEvent(sequence=2**40 + i, task_id=request.task_id,
                                          kind=train_pb2.EVENT_KIND_PROGRESS, status=train_pb2.TASK_STATUS_RUNNING,
                                          current_step=i,
                                          message=f"replay={request.replay} from={request.from_sequence}")
            if request.task_id == "fail-mid" and i == 1:
                raise FailedPrecondition("worker died")

    async def CancelTraining(self, request, context):
        return _task(request.task_id, train_pb2.TASK_STATUS_CANCELLED)

    async def ResumeTraining(self, request, context):
        task = _task(request.task_id, train_pb2.TASK_STATUS_PENDING)
        task.message = f"resume from {request.checkpoint or '<last>'}"
        return task


class FakeInference(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, state: FakeState):
        self.state = state

    async def Chat(self, request, context):
        if request.HasField("model_path") and request.model_path.startswith("missing"):
            raise NotFound(f"model_path: {request.model_path!r} does not exist", [("model_path", "does not exist")])
        last = request.messages[-1].content if request.messages else ""
        if request.HasField("tools_json"):  # answers the last message as it is (tool call parsing)
            return inference_pb2.ChatResponse(content=last, finish_reason="stop", model="default",
                                              usage=inference_pb2.Usage(prompt_tokens=len(request.tools_json)))
        parts = [f"echo:{last}", f"roles={','.join(m.role for m in request.messages)}"]
        if request.HasField("seed"):
            parts.append(f"seed={request.seed}")
        if request.HasField("max_tokens"):
            parts.append(f"max_tokens={request.max_tokens}")
        if request.HasField("temperature"):
            parts.append(f"temperature={request.temperature}")
        if request.stop:
            parts.append(f"stop={'/'.join(request.stop)}")
        return inference_pb2.ChatResponse(
            content=" ".join(parts), finish_reason="length" if request.HasField("max_tokens") else "stop",
            usage=inference_pb2.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
            model=request.model_path if request.HasField("model_path") else "default",
        )

    async def ChatStream(self, request, context):
        last = request.messages[-1].content if request.messages else ""
        if last == "fail-first":
            raise InvalidArgument.for_field("messages[0].content", "refused")
        if last == "busy-first":
            raise ResourceExhausted("generation queue is full")
        if request.HasField("tools_json"):  # the last message in 4-character pieces
            for i in range(0, len(last), 4):
                yield inference_pb2.ChatStreamResponse(token=last[i:i + 4])
            yield inference_pb2.ChatStreamResponse(finish_reason="stop", usage=inference_pb2.Usage())
            return
        if last == "slow-start":
            self.state.stream_started.set()
            try:
                await asyncio.sleep(30)
            finally:  # cancellation (CancelledError) or the server closing the generator
                self.state.stream_cancelled.set()
        if last == "slow":
            self.state.stream_started.set()
            finished = False
            try:
                yield inference_pb2.ChatStreamResponse(token="first")
                for _ in range(150):  # a token every 0.2 s for 30 s: only cancellation ends it early
                    await asyncio.sleep(0.2)
                    self.state.tokens_sent += 1
                    yield inference_pb2.ChatStreamResponse(token=".")
                finished = True
            finally:  # CancelledError or GeneratorExit when the call is cancelled
                if not finished:
                    self.state.stream_cancelled.set()
            return
        for token in ("你", "好", "!"):
            yield inference_pb2.ChatStreamResponse(token=token)
            if last == "fail" and token == "好":
                raise ResourceExhausted("generation queue is full")
        yield inference_pb2.ChatStreamResponse(
            token="", finish_reason="stop",
            usage=inference_pb2.Usage(prompt_tokens=4, completion_tokens=3, total_tokens=7))

    async def ListModels(self, request, context):
        return inference_pb2.ListModelsResponse(models=[
            inference_pb2.ModelInfo(path="/m/base", kind="full", is_default=True, parameters=2**33),
            inference_pb2.ModelInfo(path="/m/adapter", kind="adapter", base_model_path="/m/base"),
        ])


def fake_register(state: FakeState):
    def register(runtime):
        data_pb2_grpc.add_DataServiceServicer_to_server(FakeData(state), runtime.server)
        train_pb2_grpc.add_TrainServiceServicer_to_server(FakeTrain(state), runtime.server)
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(FakeInference(state), runtime.server)
        return [service_full_name(data_pb2, "DataService"), service_full_name(train_pb2, "TrainService"),
                service_full_name(inference_pb2, "InferenceService")]
    return register

"""InferenceService servicer: protos in, plain values to the registry and engine, protos out.

Every generation is admitted by the AdmissionLimiter first (RESOURCE_EXHAUSTED at once when
full), then runs in a worker thread of an executor sized to `inference.max_concurrent`; the
thread frees its slot when the generation really ends. A client that cancels (or whose
deadline passes) stops its generation within one decoding step.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from services.common.metrics import TOKENS_GENERATED
from services.common.config import Config
from services.common.errors import InvalidArgument
from services.common.logging_setup import request_id_var
from services.common.server import ServiceRuntime, service_full_name
from services.inference import engine
from services.common.admission import AdmissionLimiter, Ticket
from services.inference.registry import LoadedModel, ModelRegistry
from wintrain.inference.v1 import inference_pb2 as pb
from wintrain.inference.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("wintrain.inference")

_END = object()  # end of a stream's piece queue
_RECENT_RUNS = 256
_DEFAULT_PAGE_SIZE = 50
_MAX_PAGE_SIZE = 1000


def _optional(request, name: str):
    return getattr(request, name) if request.HasField(name) else None


def _usage(prompt_tokens: int, completion_tokens: int) -> pb.Usage:
    """Usage of a finished generation (counted once, into wintrain_tokens_generated_total)."""
    TOKENS_GENERATED.inc(completion_tokens)
    return pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens)


def _model_info(entry: LoadedModel) -> pb.ModelInfo:
    return pb.ModelInfo(
        path=entry.key,
        kind=entry.source.kind,
        base_model_path=str(entry.source.base_path) if entry.source.kind == "adapter" else "",
        parameters=entry.parameters,
        memory_bytes=entry.memory_bytes,
        last_used=entry.last_used_iso,
        is_default=entry.is_default,
        device=entry.device,
        dtype=entry.dtype,
    )


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, config: Config, registry: ModelRegistry | None = None):
        self.config = config
        self.registry = registry or ModelRegistry(config)
        max_concurrent = int(config.get("inference.max_concurrent", 2))
        self.limiter = AdmissionLimiter(max_concurrent, int(config.get("inference.max_queue", 8)))
        # One thread per admitted generation (+1: a finishing thread hands its slot on before
        # it is back in the pool).
        self.executor = ThreadPoolExecutor(max_workers=max_concurrent + 1, thread_name_prefix="wintrain-generate")
        self.cap = int(config.get("inference.max_new_tokens_cap", 2048))
        # Applied where a request enters (services.common.server): defaults held to the cap.
        self.default_limits = {t.DESCRIPTOR.full_name: {"max_tokens": self.cap} for t in (pb.ChatRequest, pb.BatchRequest)}
        self.batch_size = int(config.get("inference.batch_size", 16))
        self.max_batch_prompts = int(config.get("inference.max_batch_prompts", 256))
        # Recent generations by request id (progress, finished) — for operators and tests.
        self.runs: collections.OrderedDict[str, engine.RunControl] = collections.OrderedDict()
        self._auto_load_task: asyncio.Task | None = None

    # -- helpers --------------------------------------------------------------------------

    def _control(self, context) -> engine.RunControl:
        remaining = context.time_remaining() if context is not None else None
        deadline = time.monotonic() + remaining if remaining is not None else None
        control = engine.RunControl(request_id=request_id_var.get(), deadline=deadline)
        if control.request_id:
            self.runs[control.request_id] = control
            while len(self.runs) > _RECENT_RUNS:
                self.runs.popitem(last=False)
        return control

    def _chat_inputs(self, request: pb.ChatRequest):
        messages = engine.check_messages([(m.role, m.content) for m in request.messages])
        params = engine.check_sampling(
            max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
            top_k=request.top_k, cap=self.cap, repetition_penalty=request.repetition_penalty,
            min_tokens=request.min_tokens, stop=list(request.stop), seed=_optional(request, "seed"),
        )
        source = self.registry.resolve(_optional(request, "model_path"))
        return messages, params, source

    async def _load(self, source) -> LoadedModel:
        cached = self.registry.cached(source)  # the common case: no thread hop
        return cached if cached is not None else await asyncio.to_thread(self.registry.get, source)

    def _work(self, ticket: Ticket, control: engine.RunControl, fn: Callable[[], Any]):
        """Runs in a worker thread; the slot is freed the moment the generation ends."""
        try:
            return fn()
        finally:
            ticket.release()
            control.mark_finished()

    async def _admitted(self, control: engine.RunControl, source, fn: Callable[[LoadedModel], Any]):
        """Admit, load the model, run `fn(loaded)` in a worker thread; cancel it if we are."""
        ticket = await self.limiter.acquire(timeout=control.remaining())
        handed_over = False
        try:
            loaded = await self._load(source)
            loop = asyncio.get_running_loop()
            handed_over = True
            future = loop.run_in_executor(self.executor, self._work, ticket, control, lambda: fn(loaded))
            try:
                return await future
            except asyncio.CancelledError:
                control.cancel()
                raise
        finally:
            if not handed_over:
                ticket.release()

    # -- RPCs -----------------------------------------------------------------------------

    async def Chat(self, request, context):
        messages, params, source = self._chat_inputs(request)
        control = self._control(context)
        enable_thinking = request.enable_thinking
        done = await self._admitted(control, source, lambda loaded: engine.chat(
            loaded, messages, params, control, enable_thinking=enable_thinking))
        return pb.ChatResponse(
            content=done.content, thinking_content=done.thinking, finish_reason=done.finish_reason,
            usage=_usage(done.prompt_tokens, done.completion_tokens), model=str(source.path),
        )

    async def ChatStream(self, request, context):
        messages, params, source = self._chat_inputs(request)
        control = self._control(context)
        enable_thinking = request.enable_thinking
        ticket = await self.limiter.acquire(timeout=control.remaining())
        handed_over = False
        try:
            loaded = await self._load(source)
            loop = asyncio.get_running_loop()
            pieces: asyncio.Queue = asyncio.Queue()

            def push(item) -> None:  # worker thread -> event loop
                try:
                    loop.call_soon_threadsafe(pieces.put_nowait, item)
                except RuntimeError:  # loop closed: nobody is listening any more
                    control.cancel()

            def generate():
                try:
                    return engine.chat(loaded, messages, params, control,
                                       enable_thinking=enable_thinking, on_text=push)
                finally:
                    push(_END)

            # However the call ends (cancel, deadline, disconnect), generation stops.
            context.add_done_callback(lambda _ctx: control.cancel())
            handed_over = True
            future = loop.run_in_executor(self.executor, self._work, ticket, control, generate)
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "unretrieved"
            try:
                while True:
                    piece = await pieces.get()
                    if piece is _END:
                        break
                    yield pb.ChatStreamResponse(token=piece)
                done = await future
            except BaseException:  # CancelledError, GeneratorExit, or the generation's error
                control.cancel()
                raise
            yield pb.ChatStreamResponse(
                finish_reason=done.finish_reason, usage=_usage(done.prompt_tokens, done.completion_tokens),
            )
        finally:
            if not handed_over:
                ticket.release()

    async def Batch(self, request, context):
        prompts = list(request.prompts)
        bad = []
        if not prompts:
            bad.append(("prompts", "must not be empty"))
        elif len(prompts) > self.max_batch_prompts:
            bad.append(("prompts", f"at most {self.max_batch_prompts} prompts (inference.max_batch_prompts)"))
        bad.extend((f"prompts[{i}]", "must not be empty") for i, p in enumerate(prompts) if not p.strip())
        if bad:
            raise InvalidArgument.for_fields(bad)
        params = engine.check_sampling(
            max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
            top_k=request.top_k, cap=self.cap, min_tokens=request.min_tokens, seed=_optional(request, "seed"),
        )
        source = self.registry.resolve(_optional(request, "model_path"))
        control = self._control(context)
        done = await self._admitted(control, source, lambda loaded: engine.batch(
            loaded, prompts, params, control, batch_size=self.batch_size))
        prompt_tokens = sum(c.prompt_tokens for c in done)
        completion_tokens = sum(c.completion_tokens for c in done)
        return pb.BatchResponse(
            results=[c.content for c in done], finish_reasons=[c.finish_reason for c in done],
            usage=_usage(prompt_tokens, completion_tokens),
        )

    async def ListModels(self, request, context):
        bad = []
        if request.page_size < 0:
            bad.append(("page_size", "must be >= 0"))
        offset = 0
        if request.page_token:
            try:
                offset = int(request.page_token)
                if offset < 0:
                    raise ValueError
            except ValueError:
                bad.append(("page_token", "not a token from a previous page"))
        if bad:
            raise InvalidArgument.for_fields(bad)
        size = min(request.page_size or _DEFAULT_PAGE_SIZE, _MAX_PAGE_SIZE)
        entries = self.registry.list()
        page = entries[offset:offset + size]
        next_token = str(offset + size) if offset + size < len(entries) else ""
        return pb.ListModelsResponse(models=[_model_info(e) for e in page], next_page_token=next_token)

    async def LoadModel(self, request, context):
        source = self.registry.resolve(request.model_path or None)
        return _model_info(await self._load(source))

    async def UnloadModel(self, request, context):
        key, freed = await asyncio.to_thread(self.registry.unload, request.model_path or None)
        return pb.UnloadModelResponse(model_path=key, freed_bytes=freed)

    # -- lifecycle ------------------------------------------------------------------------

    def start_auto_load(self, runtime: ServiceRuntime) -> None:
        """Load the default model in the background; health turns SERVING once it is loaded."""

        async def auto_load():
            # The health servicer starts out SERVING for ""; say NOT_SERVING before the first call.
            await runtime.set_serving(False)
            started = time.perf_counter()
            try:
                await self._load(self.registry.default_source())
            except Exception:  # noqa: BLE001 - logged; the service stays NOT_SERVING
                log.exception("cannot load the default model; staying NOT_SERVING")
                return
            log.info("default model ready", extra={"seconds": round(time.perf_counter() - started, 3)})
            await runtime.set_serving(True)

        self._auto_load_task = asyncio.get_running_loop().create_task(auto_load())

    async def close(self) -> None:
        if self._auto_load_task is not None and not self._auto_load_task.done():
            self._auto_load_task.cancel()
        for control in list(self.runs.values()):
            control.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


def register(runtime: ServiceRuntime, servicer: InferenceServicer | None = None) -> list[str]:
    """Add the InferenceService to the runtime's server (tests may pass their own servicer)."""
    servicer = servicer or InferenceServicer(runtime.config)
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, runtime.server)
    runtime.limit_defaults(servicer.default_limits)
    runtime.on_shutdown(servicer.close)
    if runtime.config.get("inference.auto_load", False):
        runtime.ready_later = True
        servicer.start_auto_load(runtime)
    return [service_full_name(pb, "InferenceService")]

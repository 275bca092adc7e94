"""InferenceService servicer: protos in, plain values to the registry and engine, protos out.

Every generation goes through `services.common.blocking` (run_admitted / stream_admitted):
admitted first (RESOURCE_EXHAUSTED at once when full), then run in a worker thread that loads
the model and generates, freeing its slots when the generation really ends. A client that
cancels, goes away or whose deadline passes stops its generation within one decoding step.

Admission counts sequences (rows of the running batch), not requests: Chat and ChatStream take
`n` slots of `inference.max_concurrent` (one per choice), Batch takes min(len(prompts),
inference.batch_size) (the rows it can have in the batch at once). A weight above
max_concurrent is clamped to it, so such a request runs alone rather than being refused.
"""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import replace
import logging
import time
from typing import Any, Callable

from services.common.metrics import TOKENS_GENERATED
from services.common.config import Config
from services.common.errors import InvalidArgument
from services.common.logging_setup import request_id_var
from services.common.protomap import message_from
from services.common.server import ServiceRuntime, service_full_name
from services.inference import constrained, engine
from services.common.admission import limiter_from_config
from services.common.blocking import run_admitted, stream_admitted
from services.inference.registry import LoadedModel, ModelRegistry
from wintrain.inference.v1 import inference_pb2 as pb
from wintrain.inference.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("wintrain.inference")

_RECENT_RUNS = 256
_DEFAULT_PAGE_SIZE = 50
_MAX_PAGE_SIZE = 1000


def _optional(request, name: str):
    return getattr(request, name) if request.HasField(name) else None


def _tools_of(request) -> list[dict] | None:
    """The OpenAI function definitions of `tools_json`, or None (INVALID_ARGUMENT naming `tools`)."""
    if not request.tools_json:
        return None
    try:
        tools = json.loads(request.tools_json)
    except ValueError as exc:
        raise InvalidArgument.for_field("tools", f"not JSON: {exc}") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InvalidArgument.for_field("tools", "expected a JSON array of tool objects")
    return tools or None


def _logprobs(entries, asked: bool) -> pb.Logprobs | None:
    """Proto Logprobs of scheduler.TokenLogprob entries (None when not asked for)."""
    if not asked:
        return None
    return pb.Logprobs(content=[
        pb.TokenLogprob(token=e.token, logprob=e.logprob, token_bytes=e.token_bytes,
                        top_logprobs=[pb.TopLogprob(token=t, logprob=lp, token_bytes=b) for t, lp, b in e.top])
        for e in entries])


def _usage(prompt_tokens: int, completion_tokens: int) -> pb.Usage:
    """Usage of a finished generation (its tokens were counted by `_generate`)."""
    return pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens)


def _model_info(entry: LoadedModel) -> pb.ModelInfo:
    return message_from(
        pb.ModelInfo, entry,
        path=entry.key,
        kind=entry.source.kind,
        base_model_path=str(entry.source.base_path) if entry.source.kind == "adapter" else "",
        last_used=entry.last_used_iso,
    )


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, config: Config, registry: ModelRegistry | None = None):
        self.config = config
        self.registry = registry or ModelRegistry(config)
        self.limiter = limiter_from_config(config, "inference", what="sequences", max_concurrent=16, max_queue=8)
        self.cap = int(config.get("inference.max_new_tokens_cap", 2048))
        # Applied where a request enters (services.common.server): defaults held to the cap.
        self.default_limits = {t.DESCRIPTOR.full_name: {"max_tokens": self.cap} for t in (pb.ChatRequest, pb.BatchRequest)}
        # Rows (sequences) decoded together in one step of a model's running batch.
        self.batch_size = int(config.get("inference.batch_size", 16))
        self.max_n = min(int(config.get("inference.max_n", 8)), self.batch_size)
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
        tools = _tools_of(request)
        messages = engine.check_messages([(m.role, m.content) for m in request.messages], tools=bool(tools))
        params = engine.check_sampling(
            max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
            top_k=request.top_k, cap=self.cap, repetition_penalty=request.repetition_penalty,
            min_tokens=request.min_tokens, stop=list(request.stop), seed=_optional(request, "seed"),
            frequency_penalty=request.frequency_penalty, presence_penalty=request.presence_penalty,
            logit_bias=dict(request.logit_bias), logprobs=request.logprobs, top_logprobs=request.top_logprobs,
        )
        if not (1 <= request.n <= self.max_n):
            raise InvalidArgument.for_field("n", f"must be in [1, {self.max_n}] (inference.max_n)")
        source = self.registry.resolve(_optional(request, "model_path"))
        if request.HasField("response_json_schema"):
            schema = constrained.parse_schema(request.response_json_schema)
            registry = self.registry
            params = replace(params, logits_hook=constrained.json_logits_hook(schema, lambda: registry.cached(source)))
        return messages, params, source, tools

    async def _load(self, source) -> LoadedModel:
        cached = self.registry.cached(source)  # the common case: no thread hop
        return cached if cached is not None else await asyncio.to_thread(self.registry.get, source)

    def _generate(self, source, control: engine.RunControl, fn: Callable[..., Any], *args, **kwargs):
        """Runs in an admitted worker thread: load the model (once, however many ask), then
        `fn(loaded, *args, control, **kwargs)`; its tokens go into wintrain_tokens_generated_total."""
        try:
            done = fn(self.registry.get(source), *args, control, **kwargs)
        except BaseException:
            # Cancelled, past its deadline or failed: the tokens it did generate still count.
            TOKENS_GENERATED.inc(control.generated)
            raise
        else:
            # Counted here, once, whether or not the client is still there for the result.
            TOKENS_GENERATED.inc(sum(c.completion_tokens for c in done) if isinstance(done, list)
                                 else done.completion_tokens)
            return done
        finally:
            control.mark_finished()

    # -- RPCs -----------------------------------------------------------------------------

    async def Chat(self, request, context):
        messages, params, source, tools = self._chat_inputs(request)
        control = self._control(context)
        done = await run_admitted(self.limiter, self._generate, source, control, engine.chat, messages, params,
                                  enable_thinking=request.enable_thinking, tools=tools, n=request.n,
                                  max_rows=self.batch_size, stop=None, cancel=control.cancel,
                                  timeout=control.remaining(), context=context, weight=max(1, request.n))
        choices = done if isinstance(done, list) else [done]
        first = choices[0]
        return pb.ChatResponse(
            content=first.content, thinking_content=first.thinking, finish_reason=first.finish_reason,
            usage=_usage(first.prompt_tokens, sum(c.completion_tokens for c in choices)), model=str(source.path),
            logprobs=_logprobs(first.logprobs, params.logprobs),
            choices=[pb.ChatChoice(index=c.index, content=c.content, thinking_content=c.thinking,
                                   finish_reason=c.finish_reason, logprobs=_logprobs(c.logprobs, params.logprobs),
                                   completion_tokens=c.completion_tokens) for c in choices] if len(choices) > 1 else [],
        )

    async def ChatStream(self, request, context):
        messages, params, source, tools = self._chat_inputs(request)
        control = self._control(context)
        async with stream_admitted(self.limiter, self._generate, source, control, engine.chat, messages, params,
                                   enable_thinking=request.enable_thinking, tools=tools, n=request.n,
                                   max_rows=self.batch_size, progress="on_event", stop=None,
                                   cancel=control.cancel, timeout=control.remaining(), context=context,
                                   weight=max(1, request.n)) as call:
            several = request.n > 1
            async for event in call:
                yield pb.ChatStreamResponse(token=event.text, index=event.index if several else None,
                                            logprobs=_logprobs(event.logprobs, params.logprobs))
            done = call.result()
        choices = done if isinstance(done, list) else [done]
        for c in choices[:-1]:
            yield pb.ChatStreamResponse(index=c.index, finish_reason=c.finish_reason)
        last = choices[-1]
        yield pb.ChatStreamResponse(
            index=last.index if several else None, finish_reason=last.finish_reason,
            usage=_usage(last.prompt_tokens, sum(c.completion_tokens for c in choices)),
        )

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
        done = await run_admitted(self.limiter, self._generate, source, control, engine.batch, prompts, params,
                                  batch_size=self.batch_size, stop=None, cancel=control.cancel,
                                  timeout=control.remaining(), context=context,
                                  weight=min(len(prompts), self.batch_size))
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
        self.limiter.shutdown()


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

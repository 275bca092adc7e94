"""OpenAI-compatible chat routes on InferenceService: the one hand-written mapping of the
gateway, since the schema is OpenAI's, not ours.

- `POST /v1/chat/completions` -> `InferenceService.Chat`, or `ChatStream` with `stream: true`
  (OpenAI `chat.completion.chunk` events, then `data: [DONE]`; `stream_options.include_usage`
  adds the usage chunk).
- `GET /v1/models` -> `InferenceService.ListModels`, with the served default model first.

`model` names a model folder (or LoRA adapter folder) as `model_path` does; `"default"`, the
configured `api.served_model_name`, or the base model's folder name select the default model.
Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the
gateway's HTTP statuses. The request and response shapes are declared once, in
`gateway.openai_protocol`. Extra vLLM-style parameters `top_k`, `repetition_penalty`, `min_tokens` and
`enable_thinking` (or `chat_template_kwargs.enable_thinking`) are passed through.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import GatewayError, dumps
from gateway.jsonmap import JsonInputError, json_to_message, message_to_json
from gateway.sse import GrpcEventStream
from gateway.openai_protocol import PASS_THROUGH, openapi_paths, openapi_schemas
from gateway.responses import JSONBytesResponse
from gateway.transcoder import Transcoder, parse_json_object, read_body, request_id_of

SERVICE = "wintrain.inference.v1.InferenceService"


def openai_error(err: GatewayError) -> dict:
    param = err.violations[0][0] if err.violations else None
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    return {"error": {"message": err.message, "type": kind, "param": param, "code": err.code}}


def openai_error_response(err: GatewayError) -> Response:
    return JSONBytesResponse(dumps(openai_error(err)), status_code=err.status)


def _text_of(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise GatewayError.invalid([(f"messages[{index}].content[{j}]", "only text parts are supported")])
        return "".join(parts)
    raise GatewayError.invalid([(f"messages[{index}].content", "expected a string or a list of text parts")])


class OpenAICompat:
    def __init__(self, transcoder: Transcoder):
        self.transcoder = transcoder
        config = transcoder.config
        self.served_name = str(config.get("api.served_model_name") or "default")
        self.default_aliases = {"", "default", self.served_name, config.base_model_path.name}
        self.chat = transcoder.by_method.get(f"{SERVICE}.Chat")
        self.chat_stream = transcoder.by_method.get(f"{SERVICE}.ChatStream")
        self.list_models = transcoder.by_method.get(f"{SERVICE}.ListModels")

    # ------------------------------------------------------------------ request
    def chat_request(self, body: dict):
        """The ChatRequest of an OpenAI chat completion body (raises GatewayError)."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError.invalid([("messages", "expected a non-empty array of messages")])
        out_messages = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise GatewayError.invalid([(f"messages[{i}]", "expected an object")])
            role = msg.get("role")
            out_messages.append({"role": "system" if role == "developer" else role,
                                 "content": _text_of(msg.get("content"), i)})
        data: dict[str, Any] = {"messages": out_messages}
        for key in PASS_THROUGH:
            if body.get(key) is not None:
                data[key] = body[key]
        if body.get("max_completion_tokens") is not None:
            data["max_tokens"] = body["max_completion_tokens"]
        kwargs = body.get("chat_template_kwargs")
        if isinstance(kwargs, dict) and kwargs.get("enable_thinking") is not None:
            data["enable_thinking"] = kwargs["enable_thinking"]
        stop = body.get("stop")
        if stop is not None:
            data["stop"] = [stop] if isinstance(stop, str) else stop
        n = body.get("n")
        if n is not None and n != 1:
            raise GatewayError.invalid([("n", "only n=1 is supported")])
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise GatewayError.invalid([("model", "expected a string")])
        if model not in self.default_aliases and model is not None:
            data["model_path"] = model
        try:
            return json_to_message(data, self.chat.request_class)
        except JsonInputError as exc:
            raise GatewayError.invalid(exc.violations) from exc

    # ------------------------------------------------------------------ routes
    async def completions(self, request: Request) -> Response:
        try:
            if self.chat is None or self.chat_stream is None:
                raise GatewayError("UNIMPLEMENTED", "InferenceService.Chat is not annotated in this build")
            body = parse_json_object(await read_body(request, self.transcoder.max_body))
            message = self.chat_request(body)
            model_name = body.get("model") or self.served_name
            stream = body.get("stream")
            if stream is not None and not isinstance(stream, bool):
                raise GatewayError.invalid([("stream", "expected true or false")])
            rid = request_id_of(request)
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            created = int(time.time())
            if stream:
                options = body.get("stream_options") or {}
                include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
                return self._stream(message, rid, completion_id, created, model_name, include_usage)  # type: ignore[return-value]
            reply = await self.transcoder.unary(self.chat, message, rid)
            usage = message_to_json(reply.usage)
            choice_message: dict[str, Any] = {"role": "assistant", "content": reply.content}
            if reply.thinking_content:
                choice_message["reasoning_content"] = reply.thinking_content
            return JSONBytesResponse(dumps({
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "message": choice_message, "logprobs": None,
                             "finish_reason": reply.finish_reason or "stop"}],
                "usage": usage,
                "system_fingerprint": None,
            }))
        except GatewayError as err:
            return openai_error_response(err)

    def _stream(self, message, rid: str, completion_id: str, created: int, model: str, include_usage: bool):
        usage: dict[str, Any] = {}

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        def render(msg) -> list[dict]:
            out = []
            if msg.token:
                out.append(chunk({"content": msg.token}))
            if msg.HasField("usage"):
                usage.update(message_to_json(msg.usage))
            if msg.HasField("finish_reason"):
                out.append(chunk({}, msg.finish_reason or "stop"))
            return out

        def finale() -> list[dict]:
            if not include_usage:
                return []
            return [{"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "system_fingerprint": None, "choices": [], "usage": usage}]

        call = self.transcoder.stream(self.chat_stream, message, rid)
        return GrpcEventStream(
            call, render, self.transcoder.to_error(self.chat_stream),
            prelude=lambda: [chunk({"role": "assistant", "content": ""})],
            finale=finale,
            error_payload=openai_error,
            error_response=lambda err: (err.status, dumps(openai_error(err))),
            first_event_wait=self.transcoder.first_event_wait,
        )

    async def models(self, request: Request) -> Response:
        try:
            if self.list_models is None:
                raise GatewayError("UNIMPLEMENTED", "InferenceService.ListModels is not annotated in this build")
            reply = await self.transcoder.unary(self.list_models, self.list_models.request_class(),
                                                request_id_of(request))
        except GatewayError as err:
            return openai_error_response(err)
        now = int(time.time())
        data = [{"id": self.served_name, "object": "model", "created": now, "owned_by": "wintrain"}]
        for model in reply.models:
            if not model.is_default:
                data.append({"id": model.path, "object": "model", "created": now, "owned_by": "wintrain",
                             "root": model.base_model_path or model.path})
        return JSONBytesResponse(dumps({"object": "list", "data": data}))

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.completions, methods=["POST"], name="openai.chat.completions"),
            Route("/v1/models", self.models, methods=["GET"], name="openai.models"),
        ]


# The OpenAPI part of these routes, generated from the protocol models.
OPENAPI_PATHS = openapi_paths()
OPENAPI_SCHEMAS = openapi_schemas()

"""OpenAI-compatible chat routes on InferenceService: the one hand-written mapping of the
gateway, since the schema is OpenAI's, not ours.

- `POST /v1/chat/completions` -> `InferenceService.Chat`, or `ChatStream` with `stream: true`
  (OpenAI `chat.completion.chunk` events, then `data: [DONE]`; `stream_options.include_usage`
  adds the usage chunk).
- `GET /v1/models` -> `InferenceService.ListModels`, with the served default model first;
  `GET /v1/models/{id}` one of them.

Requests are validated by the pydantic models of `gateway.openai_protocol` (OpenAI field
names in `param`), which also give the OpenAPI part of these routes.

`model` names a model folder (or LoRA adapter folder) as `model_path` does, relative to the
workspace as `/v1/models` lists it; `"default"`, the configured `api.served_model_name`, or the
base model's folder name select the default model. Other model ids (fine-tuned models) come
from sources registered with `add_model_source`. Errors use OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, with the gateway's HTTP statuses. Extra
vLLM-style parameters `top_k`, `repetition_penalty`, `min_tokens` and `enable_thinking` (or
`chat_template_kwargs.enable_thinking`) are passed through.

`tools` go to the model's chat template (`ChatRequest.tools_json`); a template that does not
render them is refused naming `tools`. Calls are parsed from the Qwen/Hermes convention
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the model's text, also in
streams, into `tool_calls` with finish_reason `tool_calls`. With `tool_choice` `required` or a
named function the answer is constrained to one call's JSON `{"name", "arguments"}` (the
function's `parameters` schema). `response_format` `json_object` /
`json_schema` constrain the answer to JSON (`ChatRequest.response_json_schema`, lm-format-enforcer
in InferenceService).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Awaitable, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import GatewayError, dumps, openai_error_body, openai_error_response
from gateway.jsonmap import JsonInputError, json_to_message, message_to_json
from gateway.openai_protocol import (PASS_THROUGH, ChatCompletionRequest, RequestInvalid, openapi_paths,
                                     openapi_schemas, parse_chat_request)
from gateway.responses import JSONBytesResponse
from gateway.sse import GrpcEventStream
from gateway.transcoder import Transcoder, parse_json_object, read_body, request_id_of

SERVICE = "wintrain.inference.v1.InferenceService"
# Fields of InferenceService's ChatRequest under their OpenAI names (errors name those).
OPENAI_PARAMS = {"model_path": "model", "tools_json": "tools", "response_json_schema": "response_format"}
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_BLOCK = re.compile(re.escape(TOOL_OPEN) + r"(.*?)" + re.escape(TOOL_CLOSE), re.S)


class ModelSource(Protocol):
    """Model ids served by another part of the gateway (e.g. fine-tuned models)."""

    def list_models(self) -> Awaitable[list[dict]]: ...  # OpenAI model cards

    def resolve(self, model_id: str) -> Awaitable[str | None]: ...  # model_path, or None: not mine


def openai_error(err: GatewayError, params: dict[str, str] | None = None) -> dict:
    return openai_error_body(err, OPENAI_PARAMS if params is None else params)


def openai_logprobs(entries) -> dict:
    """OpenAI's `logprobs` of a choice (or chunk) from proto TokenLogprobs."""
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.token_bytes),
                         "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token_bytes)}
                                          for t in e.top_logprobs]} for e in entries],
            "refusal": None}


def response_schema(req: ChatCompletionRequest) -> dict | None:
    """The JSON Schema the answer must follow (constrained decoding in InferenceService), or None."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    schema = (fmt.json_schema or {}).get("schema")
    if not isinstance(schema, dict):
        raise GatewayError.invalid([("response_format.json_schema.schema", "expected a JSON Schema object")])
    return schema


def forces_a_call(req: ChatCompletionRequest) -> bool:
    """tool_choice `required` or a named function (with tools)."""
    choice = req.tool_choice
    return bool(req.tools) and (choice == "required" or (choice is not None and not isinstance(choice, str)))


def forced_call_schema(req: ChatCompletionRequest) -> dict:
    """The JSON Schema of the one call the answer must be, `{"name", "arguments"}` (decoding is
    constrained to it): a named function's own parameters, or any of the tools for `required`."""
    functions = {t.function.name: t.function for t in req.tools}
    if isinstance(req.tool_choice, str):
        names = list(functions)
    else:
        names = [req.tool_choice.function.name]
        if names[0] not in functions:
            raise GatewayError.invalid([("tool_choice.function.name", f"{names[0]!r} is not one of `tools`")])
    arguments = (functions[names[0]].parameters if len(names) == 1 else None) or {"type": "object"}
    return {"type": "object", "properties": {"name": {"enum": names}, "arguments": arguments},
            "required": ["name", "arguments"], "additionalProperties": False}


def _text_of(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text or "" for part in content)  # validated: text parts only


def _message_text(msg) -> str:
    """A message's text; an assistant turn's tool calls are written in the convention the
    model answers in (`<tool_call>{json}</tool_call>`), so a template sees them as it made them."""
    text = _text_of(msg.content)
    for call in msg.tool_calls or ():
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            arguments = call.function.arguments
        block = json.dumps({"name": call.function.name, "arguments": arguments}, ensure_ascii=False)
        text += ("\n" if text else "") + f"{TOOL_OPEN}\n{block}\n{TOOL_CLOSE}"
    return text


def _tool_call(text: str) -> dict | None:
    """One OpenAI tool call of the JSON inside a `<tool_call>` block, or None (not a call)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": data["name"],
                         "arguments": arguments if isinstance(arguments, str)
                         else json.dumps(arguments, ensure_ascii=False)}}


def parse_tool_calls(text: str, parallel: bool = True) -> tuple[str | None, list[dict]]:
    """(content outside the calls or None, tool calls) of a whole answer. Blocks that do not
    hold a call stay text."""
    calls: list[dict] = []
    pieces: list[str] = []
    last = 0
    for match in _TOOL_BLOCK.finditer(text):
        call = _tool_call(match.group(1).strip())
        if call is None:
            continue
        pieces.append(text[last:match.start()])
        last = match.end()
        if parallel or not calls:
            calls.append(call)
    if not calls:
        return text, []
    pieces.append(text[last:])
    rest = "".join(pieces).strip()
    return rest or None, calls


class ToolStreamParser:
    """Splits streamed text into content deltas and whole tool calls. Text that may be the
    start of `<tool_call>` is held back until it is known; a call is sent as one delta when
    its block closes (its JSON is only known then)."""

    def __init__(self, parallel: bool = True, forced: bool = False):
        self.parallel = parallel
        self.forced = forced  # the whole answer is one call's JSON (tool_choice required / named)
        self.buffer = ""
        self.calls = 0

    def feed(self, text: str) -> list[dict]:
        self.buffer += text
        out: list[dict] = []
        if self.forced:
            return out
        while self.buffer:
            start = self.buffer.find(TOOL_OPEN)
            if start < 0:
                keep = _partial_suffix(self.buffer, TOOL_OPEN)
                self._content(out, self.buffer[:len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep:]
                break
            self._content(out, self.buffer[:start])
            self.buffer = self.buffer[start:]
            end = self.buffer.find(TOOL_CLOSE)
            if end < 0:
                break
            block = self.buffer[len(TOOL_OPEN):end]
            self.buffer = self.buffer[end + len(TOOL_CLOSE):]
            call = _tool_call(block.strip())
            if call is None:
                self._content(out, TOOL_OPEN + block + TOOL_CLOSE)
            elif self.parallel or not self.calls:
                out.append({"tool_calls": [{"index": self.calls, **call}]})
                self.calls += 1
        return out

    def flush(self) -> list[dict]:
        out: list[dict] = []
        call = _tool_call(self.buffer.strip()) if self.forced else None
        if call is not None:
            self.buffer = ""
            self.calls = 1
            return [{"tool_calls": [{"index": 0, **call}]}]
        self._content(out, self.buffer)
        self.buffer = ""
        return out

    def _content(self, out: list[dict], text: str) -> None:
        if text and not (self.calls and not text.strip()):
            out.append({"content": text})


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a beginning of `tag`."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class OpenAICompat:
    def __init__(self, transcoder: Transcoder):
        self.transcoder = transcoder
        config = transcoder.config
        self.config = config
        self.served_name = str(config.get("api.served_model_name") or "default")
        self.default_aliases = {"", "default", self.served_name, config.base_model_path.name}
        self.chat = transcoder.by_method.get(f"{SERVICE}.Chat")
        self.chat_stream = transcoder.by_method.get(f"{SERVICE}.ChatStream")
        self.list_models = transcoder.by_method.get(f"{SERVICE}.ListModels")
        self.model_sources: list[ModelSource] = []

    def add_model_source(self, source: ModelSource) -> None:
        """Serve more model ids (listed in /v1/models, accepted as `model`)."""
        self.model_sources.append(source)

    # ------------------------------------------------------------------ request
    async def model_path_of(self, model: str | None) -> str | None:
        """The ChatRequest.model_path of an OpenAI `model` (None: the default model)."""
        if model is None or model in self.default_aliases:
            return None
        for source in self.model_sources:
            path = await source.resolve(model)
            if path is not None:
                return path
        return model

    def chat_request(self, req: ChatCompletionRequest, model_path: str | None):
        """The ChatRequest of a validated OpenAI chat completion (raises GatewayError)."""
        schema = response_schema(req)
        choice = req.tool_choice
        if choice is not None and not req.tools and choice != "none":
            raise GatewayError.invalid([("tool_choice", "needs `tools`")])
        if forces_a_call(req):
            if schema is not None:
                raise GatewayError.invalid([("response_format", "cannot be combined with tool_choice 'required' "
                                             "or a named function")])
            schema = forced_call_schema(req)
        use_tools = bool(req.tools) and choice != "none"
        messages = []
        for msg in req.messages:
            role = "system" if msg.role == "developer" else msg.role
            messages.append({"role": role, "content": _message_text(msg)})
        data: dict[str, Any] = {"messages": messages}
        for key in PASS_THROUGH:
            value = getattr(req, key)
            if value is not None:
                data[key] = value
        if req.max_completion_tokens is not None:
            data["max_tokens"] = req.max_completion_tokens
        if req.chat_template_kwargs is not None and req.chat_template_kwargs.enable_thinking is not None:
            data["enable_thinking"] = req.chat_template_kwargs.enable_thinking
        if req.stop is not None:
            data["stop"] = [req.stop] if isinstance(req.stop, str) else req.stop
        if req.logit_bias:
            bad = [k for k in req.logit_bias if not re.fullmatch(r"-?[0-9]{1,10}", k)]
            if bad:
                raise GatewayError.invalid([("logit_bias", f"keys are token ids (integers as strings), got {bad[0]!r}")])
            data["logit_bias"] = {str(int(k)): v for k, v in req.logit_bias.items()}
        if schema is not None:
            data["response_json_schema"] = json.dumps(schema, ensure_ascii=False)
        if use_tools:
            data["tools_json"] = json.dumps([t.model_dump(exclude_none=True) for t in req.tools], ensure_ascii=False)
        if model_path is not None:
            data["model_path"] = model_path
        try:
            return json_to_message(data, self.chat.request_class)
        except JsonInputError as exc:
            raise GatewayError.invalid(exc.violations) from exc

    # ------------------------------------------------------------------ routes
    async def completions(self, request: Request) -> Response:
        params = OPENAI_PARAMS
        try:
            if self.chat is None or self.chat_stream is None:
                raise GatewayError("UNIMPLEMENTED", "InferenceService.Chat is not annotated in this build")
            body = parse_json_object(await read_body(request, self.transcoder.max_body))
            try:
                req = parse_chat_request(body)
            except RequestInvalid as exc:
                raise GatewayError.invalid(exc.violations) from None
            if req.max_completion_tokens is not None:
                params = {**OPENAI_PARAMS, "max_tokens": "max_completion_tokens"}
            message = self.chat_request(req, await self.model_path_of(req.model))
            model_name = req.model or self.served_name
            tools = message.HasField("tools_json")
            parallel = req.parallel_tool_calls is not False
            rid = request_id_of(request)
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            created = int(time.time())
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                parser = ToolStreamParser(parallel, forced=forces_a_call(req)) if tools else None
                return self._stream(message, rid, completion_id, created, model_name, include_usage,  # type: ignore[return-value]
                                    parser, params)
            reply = await self.transcoder.unary(self.chat, message, rid)
            usage = message_to_json(reply.usage)
            choices = []
            for c in (reply.choices or [reply]):
                if tools and forces_a_call(req):
                    call = _tool_call(c.content.strip())
                    content, calls = (None, [call]) if call is not None else (c.content, [])
                else:
                    content, calls = parse_tool_calls(c.content, parallel) if tools else (c.content, [])
                choice_message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    choice_message["tool_calls"] = calls
                if c.thinking_content:
                    choice_message["reasoning_content"] = c.thinking_content
                finish = "tool_calls" if calls else (c.finish_reason or "stop")
                choices.append({"index": c.index if reply.choices else 0, "message": choice_message,
                                "logprobs": openai_logprobs(c.logprobs.content) if message.logprobs else None,
                                "finish_reason": finish})
            return JSONBytesResponse(dumps({
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": choices,
                "usage": usage,
                "system_fingerprint": None,
            }))
        except GatewayError as err:
            return openai_error_response(err, params)

    def _stream(self, message, rid: str, completion_id: str, created: int, model: str, include_usage: bool,
                parser: ToolStreamParser | None = None, params: dict[str, str] = OPENAI_PARAMS):
        usage: dict[str, Any] = {}
        n = message.n or 1
        parsers = {0: parser}
        if parser is not None:
            parsers.update((i, ToolStreamParser(parser.parallel)) for i in range(1, n))

        def chunk(delta: dict, finish_reason: str | None = None, index: int = 0, logprobs=None) -> dict:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": None,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}

        def render(msg) -> list[dict]:
            out = []
            i = msg.index
            p = parsers.get(i)
            if msg.token:
                logprobs = openai_logprobs(msg.logprobs.content) if message.logprobs else None
                if p is None:
                    out.append(chunk({"content": msg.token}, index=i, logprobs=logprobs))
                else:
                    out.extend(chunk(delta, index=i) for delta in p.feed(msg.token))
            if msg.HasField("usage"):
                usage.update(message_to_json(msg.usage))
            if msg.HasField("finish_reason"):
                finish = msg.finish_reason or "stop"
                if p is not None:
                    out.extend(chunk(delta, index=i) for delta in p.flush())
                    if p.calls:
                        finish = "tool_calls"
                out.append(chunk({}, finish, index=i))
            return out

        def finale() -> list[dict]:
            if not include_usage:
                return []
            return [{"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "system_fingerprint": None, "choices": [], "usage": usage}]

        call = self.transcoder.stream(self.chat_stream, message, rid)
        return GrpcEventStream(
            call, render, self.transcoder.to_error(self.chat_stream),
            prelude=lambda: [chunk({"role": "assistant", "content": ""}, index=i) for i in range(n)],
            finale=finale,
            error_payload=lambda err: openai_error(err, params),
            error_response=lambda err: (err.status, dumps(openai_error(err, params))),
            first_event_wait=self.transcoder.first_event_wait,
        )

    # ------------------------------------------------------------------ models
    def model_id(self, path: str) -> str:
        """The id a client sends back as `model`: the path relative to the workspace when it is
        inside it (as clients name it), else the path as the server knows it."""
        from pathlib import Path

        try:
            return Path(path).resolve().relative_to(self.config.workspace.resolve()).as_posix()
        except ValueError:
            return path

    async def model_cards(self, request: Request) -> list[dict]:
        """Every model id this gateway serves: the default (by its served name and its folder
        name), the loaded models, then those of the registered sources."""
        if self.list_models is None:
            raise GatewayError("UNIMPLEMENTED", "InferenceService.ListModels is not annotated in this build")
        now = int(time.time())
        cards = [{"id": self.served_name, "object": "model", "created": now, "owned_by": "wintrain"}]
        folder = self.config.base_model_path.name
        if folder and folder != self.served_name:
            cards.append({"id": folder, "object": "model", "created": now, "owned_by": "wintrain",
                          "root": self.served_name})
        token = ""
        for _ in range(1000):  # pages of the cache (bounded)
            req = self.list_models.request_class(page_size=1000, page_token=token)
            reply = await self.transcoder.unary(self.list_models, req, request_id_of(request))
            for model in reply.models:
                if not model.is_default:
                    card = {"id": self.model_id(model.path), "object": "model", "created": now,
                            "owned_by": "wintrain"}
                    card["root"] = self.model_id(model.base_model_path) if model.base_model_path else card["id"]
                    cards.append(card)
            token = reply.next_page_token
            if not token:
                break
        for source in self.model_sources:
            cards.extend(await source.list_models())
        return cards

    async def models(self, request: Request) -> Response:
        try:
            cards = await self.model_cards(request)
        except GatewayError as err:
            return openai_error_response(err, OPENAI_PARAMS)
        return JSONBytesResponse(dumps({"object": "list", "data": cards}))

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        try:
            for card in await self.model_cards(request):
                if card["id"] == model_id:
                    return JSONBytesResponse(dumps(card))
            raise GatewayError("NOT_FOUND", f"model {model_id!r} is not served here (see GET /v1/models)",
                               [("model", "not a served model id")])
        except GatewayError as err:
            return openai_error_response(err, OPENAI_PARAMS)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.completions, methods=["POST"], name="openai.chat.completions"),
            Route("/v1/models", self.models, methods=["GET"], name="openai.models"),
            Route("/v1/models/{model_id:path}", self.model, methods=["GET"], name="openai.model"),
        ]


# The OpenAPI part of these routes, generated from the protocol models.
OPENAPI_PATHS = openapi_paths()
OPENAPI_SCHEMAS = openapi_schemas()

"""The OpenAI-compatible routes' request and response shapes, declared once (as vLLM's
`protocol.py`). The OpenAPI part of `/v1/...` is generated from these models, and the
request mapping in `gateway.openai_compat` reads its pass-through fields from them.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    # OpenAI clients send more than we read (frequency_penalty, user, ...): ignored, as vLLM does.
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ChatMessageParam(_Open):
    role: str = Field(description="`system`, `user` or `assistant` (`developer` is read as `system`).")
    content: Optional[Union[str, list[TextPart]]] = Field(None, description="Text, or a list of text parts.")


class StreamOptions(_Open):
    include_usage: Optional[bool] = Field(None, description="End the stream with a usage chunk.")


class ChatTemplateKwargs(_Open):
    enable_thinking: Optional[bool] = None


# Fields copied as they are into InferenceService's ChatRequest (same names there).
PASS_THROUGH = ("max_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty", "enable_thinking",
                "min_tokens")


class ChatCompletionRequest(_Open):
    model: Optional[str] = Field(None, description="Model folder, adapter folder, or `default`.")
    messages: list[ChatMessageParam] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="Same as `max_tokens`.")
    temperature: Optional[float] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0)
    min_tokens: Optional[int] = Field(None, ge=0, description="vLLM extension: generate at least this many tokens.")
    repetition_penalty: Optional[float] = Field(None, gt=0, description="vLLM extension.")
    enable_thinking: Optional[bool] = Field(None, description="Qwen3-style thinking on or off.")
    chat_template_kwargs: Optional[ChatTemplateKwargs] = Field(None, description="`enable_thinking` is read from here too.")
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    n: Optional[int] = Field(None, ge=1, le=1, description="Only 1 is supported.")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    reasoning_content: Optional[str] = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class Delta(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: Optional[str] = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: str


class ErrorResponse(BaseModel):
    error: ErrorInfo


MODELS = (ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, ModelList, ErrorResponse)
REF = "#/components/schemas/"


def _to_openapi_30(node: Any) -> Any:
    """pydantic's JSON Schema (2020-12) as OpenAPI 3.0: `anyOf [X, null]` -> X + nullable,
    numeric exclusive bounds -> flags, `const` -> one-value enum."""
    if isinstance(node, list):
        return [_to_openapi_30(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k != "title"}
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if options and any(o == {"type": "null"} for o in options):
            rest = [o for o in options if o != {"type": "null"}]
            del node[key]
            if len(rest) == 1:
                inner = rest[0]
                node = {**({"allOf": [inner]} if "$ref" in inner else inner), **node, "nullable": True}
            else:
                node = {**node, key: rest, "nullable": True}
    node = {k: _to_openapi_30(v) for k, v in node.items()}
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node.get(bound), bool):
            node[plain], node[bound] = node[bound], True  # 3.0: a flag on minimum/maximum
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("type") == "null":  # a field that is always null (logprobs)
        node = {"nullable": True, "enum": [None], **{k: v for k, v in node.items() if k != "type"}}
    return node


def openapi_schemas() -> dict[str, dict]:
    """Component schemas of every model (and the models they use), OpenAPI 3.0 style."""
    out: dict[str, dict] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template=REF + "{model}")
        for name, sub in schema.pop("$defs", {}).items():
            out[name] = _to_openapi_30(sub)
        out[model.__name__] = _to_openapi_30(schema)
    return out


def _json(name: str) -> dict:
    return {"application/json": {"schema": {"$ref": REF + name}}}


def openapi_paths() -> dict:
    error = {"description": "`{\"error\": {message, type, param, code}}`", "content": _json("ErrorResponse")}
    return {
        "/v1/chat/completions": {"post": {
            "tags": ["OpenAI compatible"],
            "operationId": "openai_chat_completions",
            "summary": "OpenAI chat completion (InferenceService.Chat / ChatStream)",
            "requestBody": {"required": True, "content": _json("ChatCompletionRequest")},
            "responses": {
                "200": {"description": "A `chat.completion`, or with `stream: true` `chat.completion.chunk` "
                                       "Server-Sent Events ending with `data: [DONE]`.",
                        "content": {**_json("ChatCompletion"),
                                    "text/event-stream": {"schema": {"type": "string"},
                                                          "x-event-schema": {"$ref": REF + "ChatCompletionChunk"}}}},
                "default": error,
            },
        }},
        "/v1/models": {"get": {
            "tags": ["OpenAI compatible"],
            "operationId": "openai_models",
            "summary": "OpenAI model list (InferenceService.ListModels)",
            "responses": {"200": {"description": "The served default model first, then every loaded one.",
                                  "content": _json("ModelList")},
                          "default": error},
        }},
    }

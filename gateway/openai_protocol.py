"""The OpenAI-compatible routes' request and response shapes, declared once (as vLLM's
`protocol.py`). The OpenAPI part of `/v1/...` is generated from these models, and the
request mapping in `gateway.openai_compat` reads its pass-through fields from them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


class _Open(BaseModel):
    # OpenAI clients send more than we read (user, metadata, store...): ignored, as vLLM does.
    # Strict: `"5"` is not a number and `true` not an integer, as in OpenAI's API.
    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    type: str = Field(description="Only `text` parts are supported (anything else: 400).")
    text: Optional[str] = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.type != "text" or self.text is None:
            raise PydanticCustomError("unsupported_part", "only text parts are supported")
        return self


class FunctionCall(_Open):
    name: str
    arguments: str = Field(description="The arguments as JSON text.")


class ToolCallParam(_Open):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageParam(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="`developer` is read as `system`; `tool` carries a tool result.")
    content: Optional[Union[str, list[ContentPart]]] = Field(None, description="Text, or a list of text parts.")
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCallParam]] = Field(
        None, description="An assistant turn's calls; rendered as `<tool_call>{json}</tool_call>` text.")
    tool_call_id: Optional[str] = Field(None, description="The call a `tool` message answers.")


class StreamOptions(_Open):
    include_usage: Optional[bool] = Field(None, description="End the stream with a usage chunk.")


class ChatTemplateKwargs(_Open):
    enable_thinking: Optional[bool] = None


class FunctionDefinition(_Open):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="JSON Schema of the arguments.")
    strict: Optional[bool] = None


class ToolParam(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"] = Field(
        description="`json_object` and `json_schema` constrain decoding (lm-format-enforcer) to JSON: any "
                    "object, or one following `json_schema.schema`.")
    json_schema: Optional[dict[str, Any]] = Field(None, description="`{\"name\", \"schema\", \"strict\"}` "
                                                                    "as OpenAI's; `schema` is required.")


# Fields copied as they are into InferenceService's ChatRequest (same names there).
PASS_THROUGH = ("max_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty", "enable_thinking",
                "min_tokens", "n", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty")


class ChatCompletionRequest(_Open):
    model: Optional[str] = Field(None, description="A model id of `GET /v1/models` (a model or adapter folder, "
                                                   "workspace-relative), or `default`.")
    messages: list[ChatMessageParam] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1, le=INT32_MAX)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=INT32_MAX, description="Same as `max_tokens`.")
    temperature: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=0, le=INT32_MAX)
    min_tokens: Optional[int] = Field(None, ge=0, le=INT32_MAX,
                                      description="vLLM extension: generate at least this many tokens.")
    repetition_penalty: Optional[float] = Field(None, gt=0, allow_inf_nan=False, description="vLLM extension.")
    enable_thinking: Optional[bool] = Field(None, description="Qwen3-style thinking on or off.")
    chat_template_kwargs: Optional[ChatTemplateKwargs] = Field(None, description="`enable_thinking` is read from here too.")
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(None, ge=-INT64_MAX - 1, le=INT64_MAX)
    n: Optional[int] = Field(None, ge=1, le=INT32_MAX, description="Choices to generate, up to the server's "
                             "`inference.max_n` (rows of one batch; with a seed, choice i samples with seed + i).")
    logprobs: Optional[bool] = Field(None, description="Log-probabilities of the answer's tokens (after penalties "
                                     "and logit_bias, before temperature / top_p / top_k).")
    top_logprobs: Optional[int] = Field(None, ge=0, le=20, description="With `logprobs`: the most likely tokens "
                                        "at each position.")
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2, allow_inf_nan=False)
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: Optional[dict[str, float]] = Field(
        None, description="Token id (as a string) -> bias added to its logit, -100..100.")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    tools: Optional[list[ToolParam]] = Field(
        None, description="Functions the model may call, rendered by the model's chat template (a template that "
                          "ignores tools: 400 naming `tools`). Calls come back in `tool_calls` with "
                          "finish_reason `tool_calls`, parsed from `<tool_call>{json}</tool_call>` text.")
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = Field(
        None, description="`auto` (default with tools), `none`, or `required` / a named function: the answer "
                          "is then one call, decoding constrained to its JSON (the function's `parameters`).")
    parallel_tool_calls: Optional[bool] = Field(None, description="Several calls may come back (true, the default);"
                                                                  " false keeps the first.")
    response_format: Optional[ResponseFormat] = None


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: Optional[str]
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprob]] = None
    refusal: Optional[list[TokenLogprob]] = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class ToolCallDelta(BaseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: Optional[FunctionCall] = None


class Delta(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCallDelta]] = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: Optional[ChoiceLogprobs] = None
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


MODELS = (ChatCompletionRequest, ChatCompletion, ChatCompletionChunk, ModelCard, ModelList, ErrorResponse)


# -- Files and fine-tuning jobs (gateway.openai_files, gateway.openai_ft): the shapes of
# /v1/files and /v1/fine_tuning/jobs, with the bounds their handlers enforce.

FILE_PURPOSES = ("fine-tune", "fine-tune-results", "batch", "assistants", "user_data", "vision", "evals")
UPLOAD_PURPOSES = tuple(p for p in FILE_PURPOSES if p != "fine-tune-results")
JOB_STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused")


class PageLimit(NamedTuple):
    """A list's `limit` query parameter: its default and its largest value (the least is 1)."""
    default: int
    maximum: int


FILES_PAGE = PageLimit(10000, 10000)  # GET /v1/files
JOBS_PAGE = PageLimit(20, 100)  # GET /v1/fine_tuning/jobs
EVENTS_PAGE = PageLimit(20, 1000)  # GET /v1/fine_tuning/jobs/{job_id}/events
CHECKPOINTS_PAGE = PageLimit(10, 100)  # GET /v1/fine_tuning/jobs/{job_id}/checkpoints


class FileUploadRequest(BaseModel):
    """multipart/form-data parts of POST /v1/files."""
    file: bytes = Field(description="The file. A `fine-tune` file is JSONL, every line a chat row "
                                    "(`messages`) or a preference row (`input`, `preferred_output`, "
                                    "`non_preferred_output`); at most `api.max_upload_bytes` (else 413).")
    purpose: Literal[UPLOAD_PURPOSES] = Field(  # type: ignore[valid-type]
        description="`fine-tune` for fine-tuning data.")


class FileObject(BaseModel):
    id: str
    object: Literal["file"]
    bytes: int = Field(ge=0)
    created_at: int
    filename: str
    purpose: Literal[FILE_PURPOSES]  # type: ignore[valid-type]
    status: Literal["uploaded", "processed", "error"]
    expires_at: Optional[int] = None
    status_details: Optional[str] = None


class _Page(BaseModel):
    object: Literal["list"]
    has_more: bool
    first_id: Optional[str] = Field(None, description="Absent on an empty page.")
    last_id: Optional[str] = Field(None, description="Absent on an empty page.")


class FileList(_Page):
    data: list[FileObject]


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: bool


_AUTO = Literal["auto"]
# Requests are strict (`"5"` is not a number, `true` not an integer) and closed (an unknown field
# is a 400 naming it): gateway.openai_ft validates create bodies with these models.
_CLOSED = ConfigDict(extra="forbid", strict=True)


class SupervisedHyperparameters(BaseModel):
    model_config = _CLOSED
    # The number first: of a refused number, pydantic's first complaint is then its bound.
    batch_size: Union[Annotated[int, Field(ge=1, le=256)], _AUTO] = Field(
        "auto", description="`auto`: clamp(rows // 32, 1, 8).")
    learning_rate_multiplier: Union[Annotated[float, Field(gt=0, le=10)], _AUTO] = Field(
        "auto", description="x 2e-4 (LoRA) or 2e-5 (full); `auto`: 1.")
    n_epochs: Union[Annotated[int, Field(ge=1, le=50)], _AUTO] = Field(
        "auto", description="`auto`: clamp(ceil(300 / rows), 3, 10).")


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Union[Annotated[float, Field(gt=0, le=10)], _AUTO] = Field("auto", description="`auto`: 0.1.")


class SupervisedMethod(BaseModel):
    model_config = _CLOSED
    hyperparameters: Optional[SupervisedHyperparameters] = None


class DpoMethod(BaseModel):
    model_config = _CLOSED
    hyperparameters: Optional[DpoHyperparameters] = None


class FineTuneMethod(BaseModel):
    model_config = _CLOSED
    type: Literal["supervised", "dpo"] = Field(description="`reinforcement` is refused (400, param `method.type`).")
    supervised: Optional[SupervisedMethod] = None
    dpo: Optional[DpoMethod] = None


class WintrainJobOptions(BaseModel):
    """Extension: any TrainingConfig setting by name (max_steps, save_steps, eval_steps, max_length,
    save_total_limit, ...) except those the OpenAI fields set (batch size, epochs, learning rate,
    seed, beta, model)."""
    model_config = ConfigDict(extra="allow", strict=True)
    strategy: Literal["lora", "full"] = Field("lora", description="`full`: a full fine-tune.")
    lora: Optional[dict[str, Any]] = Field(None, description="LoraConfig settings (r, lora_alpha, lora_dropout, "
                                                             "target_modules, bias); strategy lora only.")


class FineTuningJobCreateRequest(BaseModel):
    model_config = _CLOSED
    model: str = Field(min_length=1, description="The base model (`default` or a model path); not an `ft:` id.")
    training_file: str = Field(min_length=1, description="A `fine-tune` file id from POST /v1/files.")
    validation_file: Optional[str] = Field(None, description="A `fine-tune` file id, not the training file.")
    suffix: Optional[str] = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    seed: Optional[int] = Field(None, ge=0, le=INT32_MAX, description="Default 42.")
    metadata: Optional[dict[str, Annotated[str, Field(max_length=512)]]] = Field(None, max_length=16,
                                               description="At most 16 pairs; keys <= 64, values <= 512 characters.")
    method: Optional[FineTuneMethod] = None
    hyperparameters: Optional[SupervisedHyperparameters] = Field(
        None, description="Deprecated (supervised only): prefer method.supervised.hyperparameters.")
    integrations: Optional[list[Any]] = Field(None, max_length=0, description="None are available (only `[]`).")
    wintrain: Optional[WintrainJobOptions] = None


class JobError(BaseModel):
    code: str = Field(description="invalid_training_file, invalid_validation_file, training_failed, interrupted.")
    message: str
    param: Optional[str] = None


class JobHyperparameters(BaseModel):
    """The resolved values (`auto` replaced)."""
    batch_size: Union[_AUTO, int]
    learning_rate_multiplier: Union[_AUTO, float]
    n_epochs: Union[_AUTO, int]


class JobMethodHyperparameters(JobHyperparameters):
    beta: Optional[Union[_AUTO, float]] = Field(None, description="dpo only.")


class JobMethodSettings(BaseModel):
    hyperparameters: JobMethodHyperparameters


class JobMethod(BaseModel):
    type: Literal["supervised", "dpo"]
    supervised: Optional[JobMethodSettings] = None
    dpo: Optional[JobMethodSettings] = None


class JobProgress(BaseModel):
    """Extension: the training task behind the job."""
    task_id: Optional[str] = Field(description="In /api/train/tasks; null when validation failed.")
    progress: float = Field(ge=0, le=100)
    current_step: int = Field(ge=0)
    total_steps: int = Field(ge=0)


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    finished_at: Optional[int]
    estimated_finish: Optional[int]
    error: Optional[JobError]
    fine_tuned_model: Optional[str] = Field(description="`ft:<model>[:<suffix>]:<job id>` once succeeded.")
    hyperparameters: JobHyperparameters
    method: JobMethod
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal[JOB_STATUSES]  # type: ignore[valid-type]
    trained_tokens: Optional[int]
    training_file: str
    validation_file: Optional[str]
    integrations: list[Any]
    metadata: Optional[dict[str, str]]
    suffix: Optional[str]
    wintrain: JobProgress


class FineTuningJobList(_Page):
    data: list[FineTuningJob]


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"]
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] = Field(description="`metrics`: step, total_steps, train_loss, ...; else {step}.")


class FineTuningJobEventList(_Page):
    data: list[FineTuningJobEvent]


class CheckpointExtension(BaseModel):
    path: str = Field(description="Usable as model_path (inference, eval, export) and ResumeTraining.checkpoint.")
    size_bytes: int = Field(ge=0)
    best: bool


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"]
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int = Field(ge=0)
    metrics: dict[str, float]
    wintrain: CheckpointExtension


class FineTuningJobCheckpointList(_Page):
    data: list[FineTuningJobCheckpoint]


FT_MODELS = (FileUploadRequest, FileObject, FileList, FileDeleted, FineTuningJobCreateRequest, FineTuningJob,
             FineTuningJobList, FineTuningJobEventList, FineTuningJobCheckpointList)


# A union member's tag in a pydantic error location (`str`, `list[ContentPart]`,
# `NamedToolChoice`, `literal['none','auto','required']`, `constrained-int`...): not a field of the request.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|constrained-[a-z]+|[a-z-]+\[.*\]|[A-Z]\w*)$")


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_TAG.match(part):
            out += f".{part}" if out else part
    return out


def violations_of(error: ValidationError) -> list[tuple[str, str]]:
    """(OpenAI field path, description) of each failed check, most specific first; of a union's
    members' complaints only the deepest is kept (`messages[0].content[0]`, not also `...content`)."""
    out: list[tuple[str, str]] = []
    for item in sorted(error.errors(include_url=False), key=lambda e: -len(e["loc"])):
        path = _path(item["loc"])
        if any(kept == path or kept.startswith(path + ".") or kept.startswith(path + "[") for kept, _ in out):
            continue
        message = item["msg"]
        out.append((path, message[0].lower() + message[1:] if message else message))
    return out


def parse_chat_request(body: dict) -> ChatCompletionRequest:
    """The validated request; raises ValueError subclass `RequestInvalid` with the violations."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise RequestInvalid(violations_of(exc)) from None


def parse_job_create(body: dict) -> FineTuningJobCreateRequest:
    """The validated POST /v1/fine_tuning/jobs body; raises `RequestInvalid` with the violations."""
    try:
        return FineTuningJobCreateRequest.model_validate(body)
    except ValidationError as exc:
        raise RequestInvalid(violations_of(exc)) from None


class RequestInvalid(ValueError):
    def __init__(self, violations: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations
REF = "#/components/schemas/"
_NULL = {"nullable": True, "enum": [None]}  # the JSON null, as an OpenAPI 3.0 schema


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
                # A nullable $ref: `nullable` beside `allOf` does not admit null (OpenAPI 3.0).
                node = ({"anyOf": [inner, dict(_NULL)], **node} if "$ref" in inner
                        else {**inner, **node, "nullable": True})
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
    for model in (*MODELS, *FT_MODELS):
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
                                    # The schema of each event's `data:` JSON.
                                    "text/event-stream": {"schema": {"$ref": REF + "ChatCompletionChunk"}}}},
                "default": error,
            },
        }},
        "/v1/models": {"get": {
            "tags": ["OpenAI compatible"],
            "operationId": "openai_models",
            "summary": "OpenAI model list (InferenceService.ListModels)",
            "responses": {"200": {"description": "The served default model first (by its served name and its "
                                                 "folder name), then every loaded one, by the id to send as `model`.",
                                  "content": _json("ModelList")},
                          "default": error},
        }},
        "/v1/models/{model_id}": {"get": {
            "tags": ["OpenAI compatible"],
            "operationId": "openai_model",
            "summary": "One model of GET /v1/models (404 when it is not served)",
            "parameters": [{"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "A model id as listed (may contain `/`)."}],
            "responses": {"200": {"description": "The model.", "content": _json("ModelCard")},
                          "default": error},
        }},
        **files_and_fine_tuning_paths(),
    }


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _after(what: str) -> dict:
    return _query("after", {"type": "string"}, f"The id of the last {what} of the previous page.")


def _limit(bounds: PageLimit) -> dict:
    return _query("limit", {"type": "integer", "minimum": 1, "maximum": bounds.maximum,
                            "default": bounds.default},
                  "Page size.")


def _path_id(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def files_and_fine_tuning_paths() -> dict:
    """/v1/files and /v1/fine_tuning/jobs (gateway.openai_files, gateway.openai_ft)."""
    error = {"description": "`{\"error\": {message, type, param, code}}` (400 naming `param`, 404, 409 on a "
                            "state conflict, 413 beyond api.max_upload_bytes).", "content": _json("ErrorResponse")}
    file_id = _path_id("file_id", "A file id (`file-...`).")
    job_id = _path_id("job_id", "A job id (`ftjob-<task id>`).")

    def op(op_id: str, summary: str, ok: str, schema: str, parameters=(), body: dict | None = None,
           tag: str = "OpenAI fine-tuning") -> dict:
        out = {"tags": [tag], "operationId": op_id, "summary": summary,
               "responses": {"200": {"description": ok, "content": _json(schema)}, "default": error}}
        if parameters:
            out["parameters"] = list(parameters)
        if body is not None:
            out["requestBody"] = body
        return out

    jobs = "/v1/fine_tuning/jobs"
    control = [job_id]
    return {
        "/v1/files": {
            "post": op("openai_files_create", "Upload a file (multipart/form-data)", "The file object.", "FileObject",
                       body={"required": True, "content": {"multipart/form-data": {
                           "schema": {"$ref": REF + "FileUploadRequest"}}}}),
            "get": op("openai_files_list", "List files", "Newest first unless `order=asc`.", "FileList", [
                _query("purpose", {"type": "string", "enum": list(FILE_PURPOSES)}, "Only files of this purpose."),
                _after("file"), _limit(FILES_PAGE),
                _query("order", {"type": "string", "enum": ["asc", "desc"], "default": "desc"}, "By creation.")]),
        },
        "/v1/files/{file_id}": {
            "get": op("openai_files_get", "One file object", "The file object.", "FileObject", [file_id]),
            "delete": op("openai_files_delete", "Delete a file", "Deleted.", "FileDeleted", [file_id]),
        },
        "/v1/files/{file_id}/content": {"get": {
            "tags": ["OpenAI fine-tuning"], "operationId": "openai_files_content", "summary": "A file's bytes",
            "parameters": [file_id],
            "responses": {"200": {"description": "The bytes as uploaded (a result file is CSV).", "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string"}}}}, "default": error}}},
        jobs: {
            "post": op("openai_ft_create", "Create a fine-tuning job (TrainService.StartTraining)",
                       "The job (`failed` at once, with `error`, when a file fails validation).", "FineTuningJob",
                       body={"required": True, "content": _json("FineTuningJobCreateRequest")}),
            "get": op("openai_ft_list", "List fine-tuning jobs", "Newest first.", "FineTuningJobList", [
                _after("job"), _limit(JOBS_PAGE),
                {"name": "metadata", "in": "query", "required": False, "style": "deepObject", "explode": True,
                 "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                 "description": "`metadata[k]=v`: only jobs whose metadata has these pairs."}]),
        },
        jobs + "/{job_id}": {"get": op("openai_ft_get", "One fine-tuning job", "The job.", "FineTuningJob", [job_id])},
        jobs + "/{job_id}/cancel": {"post": op("openai_ft_cancel", "Cancel a job (409 when it has ended)",
                                               "The job.", "FineTuningJob", control)},
        jobs + "/{job_id}/pause": {"post": op("openai_ft_pause", "Pause a running job (checkpoint, then stop)",
                                              "The job.", "FineTuningJob", control)},
        jobs + "/{job_id}/resume": {"post": op("openai_ft_resume", "Resume a paused or interrupted job",
                                               "The job.", "FineTuningJob", control)},
        jobs + "/{job_id}/events": {"get": op(
            "openai_ft_events", "A job's events", "Newest first.", "FineTuningJobEventList",
            [job_id, _after("event"), _limit(EVENTS_PAGE)])},
        jobs + "/{job_id}/checkpoints": {"get": op(
            "openai_ft_checkpoints", "A job's checkpoints", "Newest first.", "FineTuningJobCheckpointList",
            [job_id, _after("checkpoint"), _limit(CHECKPOINTS_PAGE)])},
    }

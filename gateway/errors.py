"""One error shape for every gateway answer: gRPC status -> HTTP status and JSON body.

Body: `{"success": false, "message": str, "code": "NOT_FOUND", "details": [{"field", "description"}]}`
(plus `"service"` when a backend is unreachable). Under `/v1` (the OpenAI-compatible routes)
the same errors are written in OpenAI's shape, `openai_error_body`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping

import grpc
from starlette.responses import Response

from services.common.rpc_status import RpcFailure, decode_rpc_error

HTTP_STATUS = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


# Seconds a refused caller is told to wait (`Retry-After` on every 429, added by the
# middleware): overload refusals are immediate and short-lived, so one second.
RETRY_AFTER_SECONDS = 1


def http_status(code: str) -> int:
    """HTTP status of a canonical gRPC code name (UNKNOWN, INTERNAL, DATA_LOSS…: 500)."""
    return HTTP_STATUS.get(code, 500)


@dataclass
class GatewayError(Exception):
    """An error answer: canonical code, message, field violations, optional backend name."""

    code: str
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)
    service: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def status(self) -> int:
        return http_status(self.code)

    def body(self) -> dict:
        out = {
            "success": False,
            "message": self.message,
            "code": self.code,
            "details": [{"field": f, "description": d} for f, d in self.violations],
        }
        if self.service:
            out["service"] = self.service
        return out

    def json_bytes(self) -> bytes:
        return dumps(self.body())

    @classmethod
    def invalid(cls, violations: list[tuple[str, str]]) -> "GatewayError":
        message = "; ".join(f"{f}: {d}" if f else d for f, d in violations)
        return cls("INVALID_ARGUMENT", message, violations)


def from_rpc_error(error: grpc.RpcError, backend: str, address: str) -> GatewayError:
    """The gateway error of a failed backend call. A backend that cannot be reached (UNAVAILABLE
    without a rich status of its own) is named with its address."""
    failure: RpcFailure = decode_rpc_error(error)
    message = failure.message
    service = ""
    if failure.code == "UNAVAILABLE":
        service = backend
        if not failure.rich:
            message = f"{backend} service unavailable at {address}: {failure.message or 'no answer'}"
    elif failure.code == "DEADLINE_EXCEEDED" and not message:
        message = f"{backend} service did not answer in time"
    return GatewayError(failure.code, message, list(failure.field_violations), service)


def dumps(obj) -> bytes:
    """Compact UTF-8 JSON (Chinese text unescaped, as the original answered)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------- OpenAI shape
OPENAI_PREFIX = "/v1"

# OpenAI's error `type` by HTTP status (the SDKs pick their exception class from the status).
_OPENAI_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
    413: "invalid_request_error", 429: "rate_limit_error",
}


def is_openai_path(path: str) -> bool:
    """True for `/v1` and everything under `/v1/`: errors there are in OpenAI's shape."""
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_param(field_path: str | None, params: Mapping[str, str] | None = None) -> str | None:
    """The OpenAI name of a violated field: `params` renames the first path segment
    (`model_path` -> `model`, `model_path[3]` stays indexed), the rest is kept."""
    if not field_path:
        return None
    if not params:
        return field_path
    head = re.match(r"[^.\[]*", field_path).group(0)
    return params.get(head, head) + field_path[len(head):] if head in params else field_path


def openai_error_body(err: GatewayError, params: Mapping[str, str] | None = None) -> dict:
    """`{"error": {"message", "type", "param", "code"}}` of a gateway error; `param` is the
    first violated field under its OpenAI name, `code` the canonical gRPC code."""
    status = err.status
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    field_path = err.violations[0][0] if err.violations else None
    message = err.message
    for name in params or ():  # `model_path: 'x' does not exist` -> `model: ...`, as the client sent it
        message = re.sub(rf"(^|; ){re.escape(name)}(?=[:.\[])", rf"\g<1>{params[name]}", message)
    return {"error": {"message": message, "type": kind, "param": openai_param(field_path, params),
                      "code": err.code}}


def openai_error_response(err: GatewayError, params: Mapping[str, str] | None = None,
                          headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(openai_error_body(err, params)), status_code=err.status,
                    media_type="application/json", headers=dict(headers or {}))

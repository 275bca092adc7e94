"""One error shape for every gateway answer: gRPC status -> HTTP status and JSON body.

Body: `{"success": false, "message": str, "code": "NOT_FOUND", "details": [{"field", "description"}]}`
(plus `"service"` when a backend is unreachable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import grpc

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

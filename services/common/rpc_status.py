"""Read the rich status of a failed gRPC call (client side: gateway, CLI, tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.common.metadata import STATUS_DETAILS_KEY


@dataclass
class RpcFailure:
    code: str  # canonical name, e.g. "INVALID_ARGUMENT"
    message: str
    field_violations: list[tuple[str, str]] = field(default_factory=list)


def decode_rpc_error(error: grpc.RpcError) -> RpcFailure:
    """Code, message and BadRequest field violations of a failed call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    violations: list[tuple[str, str]] = []
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for item in trailing or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key != STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend((v.field, v.description) for v in bad.field_violations)
    return RpcFailure(code=code.name if code else "UNKNOWN", message=message or "", field_violations=violations)

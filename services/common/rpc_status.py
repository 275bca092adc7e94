"""Rich gRPC error status: built by the server, read by clients (gateway, CLI, tests).

A failed call carries a `google.rpc.Status` in its trailers; BadRequest details name the
fields at fault. grpcio-status (`grpc_status.rpc_status`) does the trailer encoding both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass
class RpcFailure:
    code: str  # canonical name, e.g. "INVALID_ARGUMENT"
    message: str
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    rich: bool = False  # the server sent a google.rpc.Status (not a transport failure)


def rich_status(code_name: str, message: str, field_violations: Iterable[tuple[str, str]] = ()) -> status_pb2.Status:
    """A google.rpc.Status; bad-request violations go into a BadRequest detail."""
    status = status_pb2.Status(code=getattr(code_pb2, code_name), message=message)
    violations = list(field_violations)
    if violations:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
        ]))
        status.details.append(detail)
    return status


def to_grpc_status(code_name: str, message: str, field_violations: Iterable[tuple[str, str]] = ()) -> grpc.Status:
    """What `context.abort_with_status` takes: code, message and the rich status trailer."""
    return rpc_status.to_status(rich_status(code_name, message, field_violations))


def _status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    if not hasattr(error, "trailing_metadata"):
        return None
    try:
        return rpc_status.from_call(error)  # AioRpcError's accessors are plain methods too
    except ValueError:  # trailer disagrees with the call's code or message: not ours
        return None


def decode_rpc_error(error: grpc.RpcError) -> RpcFailure:
    """Code, message and BadRequest field violations of a failed call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    status = _status_of(error)
    violations: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations.extend((v.field, v.description) for v in bad.field_violations)
    return RpcFailure(code=code.name if code else "UNKNOWN", message=message or "",
                      field_violations=violations, rich=status is not None)

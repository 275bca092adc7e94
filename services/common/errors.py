"""Domain errors. Plain exceptions with a canonical gRPC code name; no grpc import here.

Domain code raises these; the server bootstrap turns them into a `google.rpc.Status` with the
canonical code and, for bad input, a `BadRequest` with one field violation per wrong field.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class. `code` is a canonical gRPC status name such as "NOT_FOUND"."""

    code = "INTERNAL"

    def __init__(self, message: str, field_violations: list[tuple[str, str]] | None = None):
        message = bounded(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.field_violations: list[tuple[str, str]] = [
            (bounded(f, MAX_VIOLATION_BYTES), bounded(d, MAX_VIOLATION_BYTES)) for f, d in field_violations or []]


# The message travels in gRPC trailers twice (grpc-message, percent-encoded, and the rich status),
# under gRPC's 8 KiB metadata limit: a longer one fails the call with RESOURCE_EXHAUSTED instead.
MAX_MESSAGE_BYTES = 1000
MAX_VIOLATION_BYTES = 300


def bounded(text: str, limit: int) -> str:
    """`text` if its UTF-8 form fits `limit` bytes, else its head and tail around a marker
    naming the length (an echoed 10,000-character id must not blow the trailers)."""
    if len(text.encode("utf-8")) <= limit:
        return text
    keep = max(1, (limit - 40) // 16)  # head 3*keep, tail keep characters of ≤ 4 bytes, marker ≤ 40
    return f"{text[:keep * 3]}…[{len(text)} characters]…{text[-keep:]}"


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"

    @classmethod
    def for_field(cls, field: str, description: str) -> "InvalidArgument":
        """One wrong field: message `field: description`, with that one violation."""
        return cls(f"{field}: {description}", [(field, description)])

    @classmethod
    def for_fields(cls, violations: list[tuple[str, str]]) -> "InvalidArgument":
        """Several wrong fields at once, all reported."""
        message = "; ".join(f"{field}: {description}" for field, description in violations)
        return cls(message, violations)


# One class per canonical code the services raise (the HTTP status is the gateway's mapping).
class NotFound(ServiceError): code = "NOT_FOUND"  # noqa: E701
class PermissionDenied(ServiceError): code = "PERMISSION_DENIED"  # noqa: E701
class FailedPrecondition(ServiceError): code = "FAILED_PRECONDITION"  # noqa: E701
class ResourceExhausted(ServiceError): code = "RESOURCE_EXHAUSTED"  # noqa: E701
class AlreadyExists(ServiceError): code = "ALREADY_EXISTS"  # noqa: E701
class Unavailable(ServiceError): code = "UNAVAILABLE"  # noqa: E701
class Unauthenticated(ServiceError): code = "UNAUTHENTICATED"  # noqa: E701
class Cancelled(ServiceError): code = "CANCELLED"  # noqa: E701
class DeadlineExceeded(ServiceError): code = "DEADLINE_EXCEEDED"  # noqa: E701

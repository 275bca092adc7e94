"""Check a request against what its proto declares it accepts: `(google.api.field_behavior) =
REQUIRED` and `(wintrain.api.v1.rules)` bounds (minimum, maximum, lengths).

The server runtime calls `check_request` once, where a request enters (`RuntimeInterceptor`,
after the documented defaults are applied), so gRPC and HTTP clients get the same
INVALID_ARGUMENT naming each field, and the OpenAPI document (`gateway.openapi`) declares the
same `required` lists and bounds from the same options. Servicers may still check what depends
on the deployment (caps from the config) or on other fields.
"""

from __future__ import annotations

import math
from functools import lru_cache

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

import services  # noqa: F401  (makes the generated `wintrain` package importable)
from services.common.errors import InvalidArgument
from wintrain.api.v1 import options_pb2

F = FieldDescriptor
_NUMBERS = {F.TYPE_DOUBLE, F.TYPE_FLOAT, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64,
            F.TYPE_SINT32, F.TYPE_SINT64, F.TYPE_FIXED32, F.TYPE_FIXED64, F.TYPE_SFIXED32, F.TYPE_SFIXED64}


def is_required(fd: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in fd.GetOptions().Extensions[field_behavior_pb2.field_behavior]


def field_rules(fd: FieldDescriptor) -> options_pb2.FieldRules | None:
    opts = fd.GetOptions()
    return opts.Extensions[options_pb2.rules] if opts.HasExtension(options_pb2.rules) else None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def range_text(rules: options_pb2.FieldRules) -> str:
    """`must be >= 1`, `must be in (0, 1]`..."""
    low = rules.minimum if rules.HasField("minimum") else None
    high = rules.maximum if rules.HasField("maximum") else None
    if low is not None and high is not None:
        return (f"must be in {'(' if rules.exclusive_minimum else '['}{_number(low)}, "
                f"{_number(high)}{')' if rules.exclusive_maximum else ']'}")
    if low is not None:
        return f"must be {'>' if rules.exclusive_minimum else '>='} {_number(low)}"
    return f"must be {'<' if rules.exclusive_maximum else '<='} {_number(high)}"


def _in_range(value: float, rules: options_pb2.FieldRules) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return not (rules.HasField("minimum") or rules.HasField("maximum"))
    if rules.HasField("minimum"):
        if value < rules.minimum or (rules.exclusive_minimum and value == rules.minimum):
            return False
    if rules.HasField("maximum"):
        if value > rules.maximum or (rules.exclusive_maximum and value == rules.maximum):
            return False
    return True


def _length_text(rules: options_pb2.FieldRules, what: str) -> str:
    parts = []
    if rules.HasField("min_length"):
        parts.append(f"at least {rules.min_length}")
    if rules.HasField("max_length"):
        parts.append(f"at most {rules.max_length}")
    return f"must have {' and '.join(parts)} {what}"


def _length_ok(n: int, rules: options_pb2.FieldRules) -> bool:
    if rules.HasField("min_length") and n < rules.min_length:
        return False
    return not (rules.HasField("max_length") and n > rules.max_length)


@lru_cache(maxsize=None)
def _plan(desc: Descriptor) -> tuple:
    """(field, required, rules, has sub-messages) of the fields worth looking at."""
    out = []
    for fd in desc.fields:
        rules = field_rules(fd)
        nested = fd.message_type is not None and not fd.message_type.GetOptions().map_entry
        if is_required(fd) or rules is not None or (nested and _has_checks(fd.message_type, frozenset())):
            out.append((fd, is_required(fd), rules, nested))
    return tuple(out)


def _has_checks(desc: Descriptor, seen: frozenset) -> bool:
    if desc.full_name in seen:
        return False
    for fd in desc.fields:
        if is_required(fd) or field_rules(fd) is not None:
            return True
        if fd.message_type is not None and _has_checks(fd.message_type, seen | {desc.full_name}):
            return True
    return False


def violations(message: Message, prefix: str = "") -> list[tuple[str, str]]:
    """(field path, description) of every declared rule the message breaks."""
    bad: list[tuple[str, str]] = []
    for fd, required, rules, nested in _plan(message.DESCRIPTOR):
        path = prefix + fd.name
        if fd.is_repeated:
            values = getattr(message, fd.name)
            if required and len(values) == 0:
                bad.append((path, "must not be empty"))
                continue
            if rules is not None and (rules.HasField("min_length") or rules.HasField("max_length")) \
                    and not _length_ok(len(values), rules):
                bad.append((path, _length_text(rules, "items")))
            if fd.message_type is not None:
                if nested:
                    for i, item in enumerate(values):
                        bad.extend(violations(item, f"{path}[{i}]."))
                continue
            for i, item in enumerate(values):
                bad.extend(_scalar(fd, item, rules, f"{path}[{i}]"))
            continue
        if fd.message_type is not None:
            if message.HasField(fd.name):
                bad.extend(violations(getattr(message, fd.name), path + "."))
            elif required:
                bad.append((path, "is required"))
            continue
        if fd.has_presence and not message.HasField(fd.name):
            if required:
                bad.append((path, "is required"))
            continue
        value = getattr(message, fd.name)
        if required and not fd.has_presence and value in ("", b"", 0, False):
            bad.append((path, "must not be empty" if fd.type in (F.TYPE_STRING, F.TYPE_BYTES) else "is required"))
            continue
        bad.extend(_scalar(fd, value, rules, path))
    return bad


def _scalar(fd: FieldDescriptor, value, rules, path: str) -> list[tuple[str, str]]:
    if rules is None:
        return []
    if fd.type in _NUMBERS and not _in_range(value, rules):
        return [(path, range_text(rules))]
    if fd.type in (F.TYPE_STRING, F.TYPE_BYTES) and not _length_ok(len(value), rules):
        return [(path, _length_text(rules, "characters"))]
    return []


def check_request(message: Message) -> None:
    """Raise InvalidArgument naming every field that breaks its declared rules."""
    bad = violations(message)
    if bad:
        raise InvalidArgument.for_fields(bad)

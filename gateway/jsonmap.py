"""JSON <-> proto for the gateway, on top of protobuf's own `json_format`.

Out: `MessageToDict` with the original field names and every no-presence field printed, then a
generic pass driven by the descriptors: enum values become their `(wintrain.api.v1.json_name)`
word (`"running"`, `"trl"`), 64-bit integers become JSON numbers (the original API used
numbers), unset `optional` fields stay absent.

In: a descriptor-driven check of the JSON value first (so a wrong type is reported with the
path of the field, e.g. `config.learning_rate: expected a number, got "abc"`, and enum words
are mapped back to their names), then `ParseDict(..., ignore_unknown_fields=True)`. Unknown
keys are ignored, as the original API ignored them, but noted (with the nearest known name)
for whoever collects them with `collect_ignored()`: the gateway returns them in a header, so
a typo such as `config.lerning_rate` does not go unseen.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import math
import re
from typing import Any, Iterator
from urllib.parse import quote

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

import services  # noqa: F401
from wintrain.api.v1 import options_pb2

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1), F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1), F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
_INT64_TYPES = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64, F.TYPE_UINT64, F.TYPE_FIXED64}
_FLOAT_TYPES = {F.TYPE_DOUBLE, F.TYPE_FLOAT}
_WELL_KNOWN_PREFIX = "google.protobuf."


_IGNORED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("ignored_fields", default=None)


@contextlib.contextmanager
def collect_ignored() -> Iterator[list[str]]:
    """Collect the request keys `normalize` ignores in this context, as `path` or
    `path (did you mean name?)`."""
    sink: list[str] = []
    token = _IGNORED.set(sink)
    try:
        yield sink
    finally:
        _IGNORED.reset(token)


def note_ignored(path: str, key: str, known) -> None:
    """Record an ignored key (no-op outside `collect_ignored`), percent-encoded so that CR/LF,
    NUL, spaces, non-ASCII and the empty name (`""`) stay visible and header-safe."""
    sink = _IGNORED.get()
    if sink is None:
        return
    shown = quote(path, safe="._[]-") or '""'
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    sink.append(f"{shown} (did you mean {close[0]}?)" if close else shown)


class JsonInputError(ValueError):
    """A request that does not fit the proto; one (field path, description) per problem."""

    def __init__(self, violations: list[tuple[str, str]]):
        self.violations = violations
        super().__init__("; ".join(f"{f}: {d}" if f else d for f, d in violations))


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _is_well_known(desc: Descriptor) -> bool:
    return desc.full_name.startswith(_WELL_KNOWN_PREFIX)


# --------------------------------------------------------------------------- enum words
_ENUM_CACHE: dict[str, tuple[dict[str, str], dict[str, str | int]]] = {}


def enum_words(enum: EnumDescriptor) -> tuple[dict[str, str], dict[str, str | int]]:
    """(proto name -> JSON word, accepted input -> proto name or number) for an enum."""
    cached = _ENUM_CACHE.get(enum.full_name)
    if cached is None:
        out: dict[str, str] = {}
        accepted: dict[str, str | int] = {}
        for value in enum.values:
            word = value.GetOptions().Extensions[options_pb2.json_name] or value.name
            out[value.name] = word
            accepted[value.name] = value.name
            accepted[word] = value.name
        cached = _ENUM_CACHE[enum.full_name] = (out, accepted)
    return cached


def enum_json_word(enum: EnumDescriptor, name: str) -> str:
    return enum_words(enum)[0].get(name, name)


# --------------------------------------------------------------------------- output
# Per message: fields whose JSON needs a fix after MessageToDict, as (name, kind, field).
_OUT_PLAN: dict[str, list[tuple[str, str, FieldDescriptor]]] = {}


def _out_plan(desc: Descriptor, visiting: frozenset = frozenset()) -> list[tuple[str, str, FieldDescriptor]]:
    plan = _OUT_PLAN.get(desc.full_name)
    if plan is not None:
        return plan
    if desc.full_name in visiting:  # recursive type: resolved when its first visit finishes
        return []
    visiting = visiting | {desc.full_name}
    plan = []
    for fd in desc.fields:
        if _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            kind = _value_kind(value_fd, visiting)
            if kind:
                plan.append((fd.name, "map", fd))
        else:
            kind = _value_kind(fd, visiting)
            if kind:
                plan.append((fd.name, kind, fd))
    _OUT_PLAN[desc.full_name] = plan
    return plan


def _value_kind(fd: FieldDescriptor, visiting: frozenset) -> str:
    if fd.type in _INT64_TYPES:
        return "int64"
    if fd.enum_type is not None:
        return "enum"
    if fd.message_type is not None and not _is_well_known(fd.message_type):
        return "message" if _out_plan(fd.message_type, visiting) else ""
    return ""


def _fix_value(fd: FieldDescriptor, kind: str, value: Any) -> Any:
    if kind == "int64":
        return int(value) if isinstance(value, str) else value
    if kind == "enum":
        return enum_json_word(fd.enum_type, value) if isinstance(value, str) else value
    _fix_message(fd.message_type, value)
    return value


def _fix_message(desc: Descriptor, data: dict) -> None:
    for name, kind, fd in _out_plan(desc):
        if name not in data:
            continue
        value = data[name]
        if kind == "map":
            value_fd = fd.message_type.fields_by_name["value"]
            value_kind = _value_kind(value_fd, frozenset())
            for key in value:
                value[key] = _fix_value(value_fd, value_kind, value[key])
        elif fd.is_repeated:
            data[name] = [_fix_value(fd, kind, item) for item in value]
        else:
            data[name] = _fix_value(fd, kind, value)


def message_to_json(message: Message) -> dict:
    """The JSON object of a message, in the original API's conventions (see module doc)."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
    )
    _fix_message(message.DESCRIPTOR, data)
    return data


# --------------------------------------------------------------------------- input
_FIELD_CACHE: dict[str, dict[str, FieldDescriptor]] = {}


def fields_by_json_key(desc: Descriptor) -> dict[str, FieldDescriptor]:
    """Fields by proto name and by lowerCamel JSON name (both are accepted on input)."""
    table = _FIELD_CACHE.get(desc.full_name)
    if table is None:
        table = {}
        for fd in desc.fields:
            table[fd.json_name] = fd
        for fd in desc.fields:
            table[fd.name] = fd
        _FIELD_CACHE[desc.full_name] = table
    return table


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"string {text!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_INT_TEXT = re.compile(r"^\s*[-+]?\d+\s*$")


def _scalar(fd: FieldDescriptor, value: Any, path: str, errors: list[tuple[str, str]]) -> Any:
    t = fd.type
    if t in _INT_RANGES:
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            text = value.strip()
            if _INT_TEXT.match(text):
                number = int(text)
            else:
                try:
                    as_float = float(text)
                    if math.isfinite(as_float) and as_float.is_integer():
                        number = int(as_float)
                except ValueError:
                    pass
        if number is None:
            errors.append((path, f"expected an integer, got {_describe(value)}"))
            return None
        low, high = _INT_RANGES[t]
        if not low <= number <= high:
            errors.append((path, f"integer {number} out of range [{low}, {high}]"))
            return None
        return number
    if t in _FLOAT_TYPES:
        if isinstance(value, bool):
            pass
        elif isinstance(value, (int, float)):
            number = float(value)
            if math.isnan(number):
                return "NaN"
            if math.isinf(number):
                return "Infinity" if number > 0 else "-Infinity"
            if t == F.TYPE_FLOAT and abs(number) > 3.4028234663852886e38:
                errors.append((path, f"number {value!r} too large for a 32-bit float"))
                return None
            return number
        elif isinstance(value, str):
            text = value.strip()
            if text in ("NaN", "Infinity", "-Infinity"):
                return text
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        errors.append((path, f"expected a number, got {_describe(value)}"))
        return None
    if t == F.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        errors.append((path, f"expected true or false, got {_describe(value)}"))
        return None
    if t in (F.TYPE_STRING, F.TYPE_BYTES):
        if isinstance(value, str):
            return value
        errors.append((path, f"expected a string, got {_describe(value)}"))
        return None
    if t == F.TYPE_ENUM:
        _, accepted = enum_words(fd.enum_type)
        if isinstance(value, str) and value in accepted:
            return accepted[value]
        if isinstance(value, int) and not isinstance(value, bool) and fd.enum_type.values_by_number.get(value):
            return value
        words = [w for w in enum_words(fd.enum_type)[0].values() if not w.endswith("_UNSPECIFIED")]
        errors.append((path, f"must be one of {', '.join(words)}; got {_describe(value)}"))
        return None
    errors.append((path, f"unsupported field type {t}"))  # groups: not used by our protos
    return None


def _single(fd: FieldDescriptor, value: Any, path: str, errors: list[tuple[str, str]]) -> Any:
    if fd.message_type is not None:
        if _is_well_known(fd.message_type):
            return value  # json_format knows their special JSON forms
        if not isinstance(value, dict):
            errors.append((path, f"expected an object, got {_describe(value)}"))
            return None
        return normalize(fd.message_type, value, path, errors)
    return _scalar(fd, value, path, errors)


def normalize(desc: Descriptor, data: dict, prefix: str = "", errors: list[tuple[str, str]] | None = None) -> dict:
    """A copy of `data` that `ParseDict` accepts for `desc`: unknown keys and nulls dropped,
    enum words mapped to names, numbers checked. Problems are appended to `errors` (or raised
    as JsonInputError when `errors` is not given)."""
    own_errors = errors is None
    errors = [] if errors is None else errors
    table = fields_by_json_key(desc)
    out: dict[str, Any] = {}
    for key, value in data.items():
        fd = table.get(key)
        if fd is None:
            note_ignored(f"{prefix}.{key}" if prefix else str(key), str(key), table)
            continue
        if value is None:
            continue
        path = f"{prefix}.{fd.name}" if prefix else fd.name
        if _is_map(fd):
            if not isinstance(value, dict):
                errors.append((path, f"expected an object, got {_describe(value)}"))
                continue
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            entries = {}
            for map_key, map_value in value.items():
                item_path = f"{path}[{map_key!r}]"
                if key_fd.type != F.TYPE_STRING:
                    _scalar(key_fd, map_key, item_path, errors)
                if map_value is None:
                    errors.append((item_path, "expected a value, got null"))
                    continue
                entries[map_key] = _single(value_fd, map_value, item_path, errors)
            out[fd.name] = entries
        elif fd.is_repeated:
            if not isinstance(value, list):
                errors.append((path, f"expected an array, got {_describe(value)}"))
                continue
            items = []
            for index, item in enumerate(value):
                if item is None:
                    errors.append((f"{path}[{index}]", "expected a value, got null"))
                    continue
                items.append(_single(fd, item, f"{path}[{index}]", errors))
            out[fd.name] = items
        else:
            out[fd.name] = _single(fd, value, path, errors)
    if own_errors and errors:
        raise JsonInputError(errors)
    return out


_PARSE_AT = re.compile(r" at [A-Za-z0-9_]+\.([A-Za-z0-9_.\[\]]+?)\.*$")


def json_to_message(data: dict, message_class: type[Message]) -> Message:
    """Parse a JSON object into a new message. Raises JsonInputError naming each bad field."""
    clean = normalize(message_class.DESCRIPTOR, data)
    try:
        return json_format.ParseDict(clean, message_class(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:  # not expected after normalize; still a 400
        text = str(exc)
        match = _PARSE_AT.search(text)
        raise JsonInputError([(match.group(1) if match else "", text)]) from exc

"""Apply the documented defaults declared in the protos (`wintrain.api.v1.default_value`).

The server runtime applies them once, where a request enters (`RuntimeInterceptor`, with the
deployment limits a service registered), so gRPC and HTTP clients get the same defaults, and
the OpenAPI document shows the same values. Servicers never call this themselves.
"""

from __future__ import annotations

import json
from typing import Mapping

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

import services  # noqa: F401  (makes the generated `wintrain` package importable)
from wintrain.api.v1 import options_pb2


def field_default(field: FieldDescriptor):
    """The declared default of a field as a Python value, or None."""
    opts = field.GetOptions()
    if not opts.HasExtension(options_pb2.default_value):
        return None
    raw = opts.Extensions[options_pb2.default_value]
    return json.loads(raw) if raw else None


# Per request message type (full name): deployment limits on its documented defaults.
DefaultLimits = Mapping[str, Mapping[str, "int | float"]]


def apply_request_defaults(request: Message, limits_by_type: DefaultLimits | None = None) -> Message:
    """`apply_defaults` with the limits registered for this request's type (the entry step)."""
    return apply_defaults(request, (limits_by_type or {}).get(request.DESCRIPTOR.full_name))


def apply_defaults(message: Message, limits: Mapping[str, int | float] | None = None) -> Message:
    """Fill unset optional fields (and empty repeated ones) that declare a default, in
    `message` and in every sub-message that is set. Returns the same message.

    `limits` caps defaults of `message`'s own fields by name: a deployment that allows less
    than a documented default (`max_tokens` 512 over `inference.max_new_tokens_cap`) gives the
    limit to a client that did not ask, instead of refusing a value it never sent. Values a
    client set are left for the caller to check."""
    limits = limits or {}
    for field in message.DESCRIPTOR.fields:
        default = field_default(field)
        is_repeated = field.is_repeated
        if is_repeated:
            values = getattr(message, field.name)
            if default is not None and len(values) == 0 and field.message_type is None:
                values.extend(default)
            elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
                for item in values:
                    apply_defaults(item)
            continue
        if field.message_type is not None:
            if message.HasField(field.name):
                apply_defaults(getattr(message, field.name))
            continue
        if default is not None and field.has_presence and not message.HasField(field.name):
            if field.name in limits:
                default = min(default, limits[field.name])
            setattr(message, field.name, default)
    return message

"""HTTP routes discovered from the service descriptors (`google.api.http` annotations).

Nothing here is specific to one service: every RPC of the five Win-Train services that carries
an HTTP rule becomes a `RouteSpec`, with the compatibility options read from the protos
(`wintrain.api.v1.http_envelope`, `http_deadline_seconds`). A new annotated RPC appears over
HTTP, in `/openapi.json` and in `/docs` without a line of gateway code.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Iterable

from google.api import annotations_pb2, http_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

import services  # noqa: F401  (makes the generated `wintrain` package importable)
from services.common.config import SERVICE_NAMES
from wintrain.api.v1 import options_pb2

log = logging.getLogger("wintrain.gateway")

# Proto package `wintrain.<name>.v1` is served by backend `<name>` (config services.<name>).
PROTO_MODULES = {name: f"wintrain.{name}.v1.{name}_pb2" for name in SERVICE_NAMES}
_HTTP_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Envelope:
    """The original `{"success", "message", "data", "timestamp"}` wrapper of one RPC."""

    message: str
    success_field: str = ""
    data_field: str = ""


@dataclass(frozen=True)
class PathVariable:
    """One `{field.path=pattern}` of a path template, bound to Starlette parameter `param`."""

    param: str
    field_path: tuple[str, ...]
    pattern: str  # "*" (one segment), "**" (the rest), or a glob such as "models/*"


@dataclass
class RouteSpec:
    """One HTTP binding of one RPC."""

    backend: str  # data | train | inference | eval | export
    service: str  # full service name, e.g. wintrain.train.v1.TrainService
    method: MethodDescriptor
    http_method: str  # GET, POST…
    template: str  # as annotated, e.g. /api/train/status/{task_id}
    path: str  # Starlette path, e.g. /api/train/status/{p0}
    variables: list[PathVariable]
    body: str  # "" (no body: query string), "*" (whole request), or a field name
    response_body: str  # "" (whole response) or a field name
    envelope: Envelope | None
    deadline_seconds: float  # 0: the configured default
    request_class: type[Message] = field(repr=False)
    response_class: type[Message] = field(repr=False)

    @property
    def grpc_path(self) -> str:
        """The gRPC method path, e.g. /wintrain.train.v1.TrainService/GetTrainingStatus."""
        return f"/{self.service}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return self.method.server_streaming

    @property
    def bound_fields(self) -> set[str]:
        """Top-level request fields bound by the path."""
        return {v.field_path[0] for v in self.variables}


_VARIABLE = re.compile(r"\{([^{}=]+)(?:=([^{}]+))?\}")


def parse_template(template: str) -> tuple[str, list[PathVariable]]:
    """Turn a google.api.http path template into a Starlette path and its variables.

    `{a.b}` and `{a=*}` match one segment; a pattern with `**` or several segments matches
    the rest of the path (the handler checks literal parts of the pattern). A `:verb` suffix
    stays part of the literal path.
    """
    variables: list[PathVariable] = []

    def replace(match: re.Match) -> str:
        param = f"p{len(variables)}"
        pattern = match.group(2) or "*"
        variables.append(PathVariable(param, tuple(match.group(1).strip().split(".")), pattern))
        return f"{{{param}:path}}" if ("**" in pattern or "/" in pattern) else f"{{{param}}}"

    path = _VARIABLE.sub(replace, template)
    if not path.startswith("/"):
        raise ValueError(f"http rule path must start with '/': {template!r}")
    return path, variables


def _rule_bindings(rule: http_pb2.HttpRule) -> Iterable[tuple[str, str, str, str]]:
    """(verb, template, body, response_body) of a rule and its additional bindings."""
    kind = rule.WhichOneof("pattern")
    if kind in _HTTP_VERBS:
        yield kind.upper(), getattr(rule, kind), rule.body, rule.response_body
    elif kind == "custom":
        yield rule.custom.kind.upper(), rule.custom.path, rule.body, rule.response_body
    for extra in rule.additional_bindings:
        yield from _rule_bindings(extra)


def _check_field_path(desc, path: tuple[str, ...], what: str) -> None:
    for i, name in enumerate(path):
        fd = desc.fields_by_name.get(name)
        if fd is None:
            raise ValueError(f"{what}: {desc.full_name} has no field {'.'.join(path[: i + 1])!r}")
        if i < len(path) - 1:
            if fd.message_type is None or fd.is_repeated:
                raise ValueError(f"{what}: {'.'.join(path[: i + 1])} is not a singular message")
            desc = fd.message_type
        elif fd.is_repeated or fd.message_type is not None:
            raise ValueError(f"{what}: path variable {'.'.join(path)} must be a scalar field")


def routes_of_module(backend: str, module: ModuleType) -> list[RouteSpec]:
    """Every HTTP-annotated, non-client-streaming RPC of every service in a *_pb2 module."""
    specs: list[RouteSpec] = []
    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            opts = method.GetOptions()
            if not opts.HasExtension(annotations_pb2.http):
                continue
            if method.client_streaming:
                log.warning("skipping %s: client streaming has no HTTP mapping", method.full_name)
                continue
            envelope = None
            if opts.HasExtension(options_pb2.http_envelope):
                env = opts.Extensions[options_pb2.http_envelope]
                envelope = Envelope(env.message, env.success_field, env.data_field)
            deadline = float(opts.Extensions[options_pb2.http_deadline_seconds])
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            for verb, template, body, response_body in _rule_bindings(opts.Extensions[annotations_pb2.http]):
                path, variables = parse_template(template)
                where = f"{method.full_name} {verb} {template}"
                for var in variables:
                    _check_field_path(method.input_type, var.field_path, where)
                if body not in ("", "*") and body not in method.input_type.fields_by_name:
                    raise ValueError(f"{where}: body field {body!r} not in {method.input_type.full_name}")
                if response_body and response_body not in method.output_type.fields_by_name:
                    raise ValueError(f"{where}: response_body {response_body!r} not in {method.output_type.full_name}")
                if envelope is not None:
                    for name in (envelope.success_field, envelope.data_field):
                        if name and name not in method.output_type.fields_by_name:
                            raise ValueError(f"{where}: envelope field {name!r} not in {method.output_type.full_name}")
                specs.append(RouteSpec(
                    backend=backend, service=service.full_name, method=method, http_method=verb,
                    template=template, path=path, variables=variables, body=body,
                    response_body=response_body, envelope=envelope, deadline_seconds=deadline,
                    request_class=request_class, response_class=response_class,
                ))
    return specs


def discover_routes(modules: dict[str, str] | None = None) -> list[RouteSpec]:
    """Routes of every backend, from the generated stubs (`PROTO_MODULES` by default)."""
    specs: list[RouteSpec] = []
    for backend, module_name in (modules or PROTO_MODULES).items():
        specs.extend(routes_of_module(backend, importlib.import_module(module_name)))
    seen: dict[tuple[str, str], str] = {}
    for spec in specs:
        key = (spec.http_method, spec.template)
        if key in seen:
            raise ValueError(f"{spec.http_method} {spec.template} bound twice ({seen[key]}, {spec.method.full_name})")
        seen[key] = spec.method.full_name
    return specs

"""The generic HTTP/JSON <-> gRPC transcoder (grpc-gateway style).

Each `RouteSpec` becomes one Starlette endpoint that builds the request message from the path
variables, the query string and/or the JSON body as the `google.api.http` rule says, calls the
backend through a generic `grpc.aio` multi-callable (no generated stub), and answers with the
JSON of the response (in the original envelope when the RPC declares one), or with SSE for a
server-streaming RPC.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
from typing import Any

import grpc

from services.common.auth import client_metadata, open_channel
from services.common.balancing import channel_options
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.errors import GatewayError, from_rpc_error
from gateway.jsonmap import (JsonInputError, collect_ignored, fields_by_json_key, json_to_message, message_to_json,
                             note_ignored)
from gateway.responses import error_response, ignored_header, json_response, render_response, with_ignored
from gateway.routes import RouteSpec
from gateway.sse import GrpcEventStream
from services.common.config import SERVICE_NAMES, Config
from services.common.metadata import REQUEST_ID_KEY

log = logging.getLogger("wintrain.gateway")
class Backends:
    """One `grpc.aio` channel per backend service, and the generic multi-callables of every
    route, made on first use inside the running event loop and closed by `close()`."""

    def __init__(self, config: Config):
        self.config = config
        # gRPC targets: one address, a DNS name of several replicas, or services.<name>.addresses.
        self.addresses = {name: config.service_target(name) for name in SERVICE_NAMES}
        max_bytes = int(config.get("server.max_message_bytes", 64 * 1024 * 1024))
        self._options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Fail fast when a backend is down rather than waiting out a long reconnect backoff.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._probes: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}

    def _open(self, cache: dict, name: str, health_check: bool) -> grpc.aio.Channel:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # channels belong to one loop (tests may run several)
            self._loop, self._channels, self._probes, self._callables = loop, {}, {}, {}
            cache = self._channels if health_check else self._probes
        channel = cache.get(name)
        if channel is None:
            options = self._options + channel_options(health_check)
            channel = cache[name] = open_channel(self.config, self.addresses[name], aio=True, options=options)
        return channel

    def channel(self, name: str) -> grpc.aio.Channel:
        """The channel calls go through: round_robin over the SERVING replicas
        (services.common.balancing)."""
        return self._open(self._channels, name, health_check=True)

    def probe_channel(self, name: str) -> grpc.aio.Channel:
        """round_robin without health checking, for `/health` to read a replica's own state
        (NOT_SERVING) when no replica is SERVING."""
        return self._open(self._probes, name, health_check=False)

    def callable(self, spec: RouteSpec):
        """The generic unary-unary or unary-stream multi-callable of a route's RPC."""
        channel = self.channel(spec.backend)
        key = (spec.backend, spec.grpc_path)
        fn = self._callables.get(key)
        if fn is None:
            factory = channel.unary_stream if spec.streaming else channel.unary_unary
            fn = self._callables[key] = factory(
                spec.grpc_path,
                request_serializer=spec.request_class.SerializeToString,
                response_deserializer=spec.response_class.FromString,
            )
        return fn

    async def close(self) -> None:
        channels = [*self._channels.values(), *self._probes.values()]
        self._channels, self._probes, self._callables = {}, {}, {}
        for channel in channels:
            await channel.close()


def request_id_of(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "") or ""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (400, naming the limit) past `api.max_body_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError.invalid([("body", f"request body of {declared} bytes exceeds api.max_body_bytes ({limit})")])
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise GatewayError.invalid([("body", f"request body exceeds api.max_body_bytes ({limit})")])
        chunks.append(chunk)
    return b"".join(chunks)


MAX_JSON_DEPTH = 64


def parse_json_object(raw: bytes) -> dict:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise GatewayError.invalid([("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")]) from exc
    except UnicodeDecodeError as exc:
        raise GatewayError.invalid([("body", f"not UTF-8 text: {exc.reason}")]) from exc
    except json.JSONDecodeError as exc:
        raise GatewayError.invalid([("body", f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")]) from exc
    if not isinstance(data, dict):
        raise GatewayError.invalid([("body", "must be a JSON object")])
    stack = [(data, 1)]
    while stack:  # iterative: later passes over the request recurse, so bound the depth here
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise GatewayError.invalid([("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")])
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return data


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    node = tree
    for name in path[:-1]:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node[path[-1]] = value


def query_to_json(spec: RouteSpec, request: Request, skip: set[str]) -> dict:
    """Request fields from the query string, grpc-gateway style: `a=1`, nested `a.b=1`,
    repeated fields by repeating the key. Unknown keys are ignored."""
    tree: dict = {}
    params = request.query_params
    for key in params.keys():
        names = key.split(".")
        if names[0] in skip:
            continue
        desc = spec.request_class.DESCRIPTOR
        fd = None
        resolved: list[str] = []
        for i, name in enumerate(names):
            table = fields_by_json_key(desc)
            fd = table.get(name)
            if fd is None:
                note_ignored(key, name, table)
                break
            resolved.append(fd.name)
            if i < len(names) - 1:
                if fd.message_type is None or fd.is_repeated:
                    fd = None
                    break
                desc = fd.message_type
        if fd is None or (fd.message_type is not None):
            continue
        values = [_query_scalar(fd, v) for v in params.getlist(key)]
        _set_path(tree, tuple(resolved), values if fd.is_repeated else values[-1])
    return tree


_QUERY_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _query_scalar(fd, value: str):
    """A query-string value as JSON would carry it: `true`/`false` (and 1/0, any case) are
    booleans for bool fields, as grpc-gateway reads them; everything else stays a string, which
    protobuf's JSON parser reads for numbers and enums and rejects, naming the field, when wrong."""
    if fd.type == fd.TYPE_BOOL:
        return _QUERY_BOOLS.get(value.strip().lower(), value)
    return value


def _path_values(spec: RouteSpec, request: Request) -> dict:
    tree: dict = {}
    for var in spec.variables:
        value = request.path_params[var.param]
        if var.pattern not in ("*", "**") and not fnmatch.fnmatchcase(value, var.pattern.replace("**", "*")):
            raise GatewayError("NOT_FOUND", f"{request.url.path} does not match {spec.template}")
        _set_path(tree, var.field_path, value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


async def build_request(spec: RouteSpec, request: Request, max_body: int) -> Message:
    """The request message of a route, from path, query and body as the HTTP rule binds them."""
    path_tree = _path_values(spec, request)
    if spec.body == "*":
        data = parse_json_object(await read_body(request, max_body))
    elif spec.body:
        raw = await read_body(request, max_body)
        data = query_to_json(spec, request, skip=spec.bound_fields | {spec.body})
        if raw.strip():
            try:
                data[spec.body] = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise GatewayError.invalid([("body", f"malformed JSON: {exc}")]) from exc
    else:
        data = query_to_json(spec, request, skip=spec.bound_fields)
    _merge(data, path_tree)  # the path wins over body and query
    try:
        return json_to_message(data, spec.request_class)
    except JsonInputError as exc:
        raise GatewayError.invalid(exc.violations) from exc


class Transcoder:
    """Makes the Starlette routes of the discovered RPCs and runs their calls."""

    def __init__(self, config: Config, specs: list[RouteSpec], backends: Backends):
        self.config = config
        self.specs = specs
        self.backends = backends
        self.by_method = {spec.method.full_name: spec for spec in specs}
        self.default_deadline = float(config.get("api.default_deadline_seconds", 60))
        self.service_credentials = client_metadata(config)
        self.max_body = int(config.get("api.max_body_bytes", 10 * 1024 * 1024))
        self.first_event_wait = float(config.get("api.sse_first_event_wait_seconds", 2.0))

    def deadline(self, spec: RouteSpec) -> float:
        return spec.deadline_seconds or self.default_deadline

    def to_error(self, spec: RouteSpec):
        address = self.backends.addresses[spec.backend]
        return lambda exc: from_rpc_error(exc, spec.backend, address)

    def metadata(self, request_id: str) -> tuple:
        # The gateway checked the caller's key; to the backends it presents its own.
        return (((REQUEST_ID_KEY, request_id),) if request_id else ()) + self.service_credentials

    async def unary(self, spec: RouteSpec, message: Message, request_id: str) -> Message:
        """Call a unary RPC; a failure is raised as GatewayError."""
        fn = self.backends.callable(spec)
        try:
            return await fn(message, timeout=self.deadline(spec), metadata=self.metadata(request_id))
        except grpc.RpcError as exc:
            raise self.to_error(spec)(exc) from exc

    def stream(self, spec: RouteSpec, message: Message, request_id: str) -> grpc.aio.UnaryStreamCall:
        """Start a server-streaming RPC (not awaited: the SSE response reads it)."""
        fn = self.backends.callable(spec)
        return fn(message, timeout=self.deadline(spec), metadata=self.metadata(request_id))

    def endpoint(self, spec: RouteSpec):
        async def handle(request: Request) -> Response:
            ignored: list[str] = []
            try:
                with collect_ignored() as ignored:
                    message = await build_request(spec, request, self.max_body)
                if ignored:
                    log.warning("ignored request fields", extra={"route": spec.path, "fields": ", ".join(ignored)})
                rid = request_id_of(request)
                if spec.streaming:
                    call = self.stream(spec, message, rid)
                    return GrpcEventStream(  # type: ignore[return-value]  (an ASGI app)
                        call, lambda msg: (message_to_json(msg),), self.to_error(spec),
                        first_event_wait=self.first_event_wait, headers=ignored_header(ignored),
                    )
                reply = await self.unary(spec, message, rid)
                return with_ignored(json_response(render_response(spec, reply)), ignored)
            except GatewayError as err:
                return with_ignored(error_response(err), ignored)

        handle.__name__ = spec.method.name
        return handle

    def routes(self) -> list[Route]:
        return [Route(spec.path, self.endpoint(spec), methods=[spec.http_method], name=spec.method.full_name)
                for spec in self.specs]

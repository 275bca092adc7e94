"""The one gRPC server bootstrap every service uses.

`create_server` builds a `grpc.aio` server with health, reflection and the interceptor
(request id, one log line per call, domain errors to rich status, unexpected exceptions to a
safe INTERNAL). `serve` runs it until SIGTERM/SIGINT, then drains: health NOT_SERVING, stop
accepting, give in-flight calls `server.grace_seconds`, run the service's shutdown hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.config import Config
from services.common.auth import check_bind_allowed, grpc_auth_guard, load_api_keys, tls_server_files
from services.common.errors import InvalidArgument, ServiceError, Unavailable
from services.common.metadata import REQUEST_ID_KEY
from services.common.reflection import enable_reflection
from services.common.proto_defaults import DefaultLimits, apply_request_defaults
from services.common.proto_rules import check_request
from services.common.rpc_status import rich_status, to_grpc_status  # noqa: F401 - rich_status re-exported
from services.common.metrics import RPC_STREAMS_OPEN, metrics_bind_host, rpc_observer, start_metrics_server
from services.common.logging_setup import new_request_id, request_id_var, setup_logging

log = logging.getLogger("wintrain.server")

_UNGUARDED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


async def abort_with_error(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """End the call with the error's canonical code, message and field violations."""
    await context.abort_with_status(to_grpc_status(error.code, error.message, error.field_violations))


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else item.value.decode()
    return ""


@dataclass(frozen=True)
class UndecodableRequest:
    """What a call gets in place of request bytes that do not parse as its message type."""

    type_name: str


def _tolerant_deserializer(deserializer):
    """`deserializer`, but bytes that do not parse (garbage, bad UTF-8 in a string field) give an
    `UndecodableRequest` instead of raising: grpc would answer a raising deserializer with
    UNKNOWN, while the interceptor refuses it with INVALID_ARGUMENT naming `request` (after the
    auth guard, so an unauthenticated caller learns nothing)."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", None) or "request"

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 - DecodeError and whatever a parser raises on bad bytes
            return UndecodableRequest(type_name)

    return deserialize


# A check run before each guarded call: raise a ServiceError to refuse it (auth lives here).
CallGuard = Callable[[str, grpc.aio.ServicerContext], None]


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    """Request id, per-call logging, and error translation for every RPC."""

    def __init__(self, guards: list[CallGuard] | None = None,
                 observers: list[Callable[[str, str, float], None]] | None = None,
                 service: str = ""):
        self.guards = guards or []
        self.observers = observers or []
        self.service = service
        # Deployment limits on documented defaults, per request type (ServiceRuntime.limit_defaults).
        self.default_limits: dict[str, dict[str, int | float]] = {}
        # Set when draining starts: open streams end at once with UNAVAILABLE.
        self.shutting_down: asyncio.Event | None = None

    def _shutdown_event(self) -> asyncio.Event:
        if self.shutting_down is None:
            self.shutting_down = asyncio.Event()
        return self.shutting_down

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        deserializer = _tolerant_deserializer(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _begin(self, method: str, context) -> str:
        rid = _metadata_value(context, REQUEST_ID_KEY) or new_request_id()
        request_id_var.set(rid)
        await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
        if not method.startswith(_UNGUARDED_PREFIXES):
            for guard in self.guards:
                guard(method, context)
        return rid

    def _finish(self, method: str, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        level = logging.INFO if code in ("OK", "CANCELLED") else logging.WARNING
        if not method.startswith("/grpc.health.v1.Health/"):
            log.log(level, "rpc", extra={"method": method, "code": code, "duration_ms": round(elapsed * 1000, 2)})
        for observer in self.observers:
            observer(method, code, elapsed)

    @contextlib.asynccontextmanager
    async def _call(self, method: str, request, context):
        """The one entry and error path of every call: request id, guards, proto defaults,
        then domain errors to rich status and anything unexpected to a safe INTERNAL."""
        started = time.perf_counter()
        code = "OK"
        try:
            await self._begin(method, context)
            if isinstance(request, UndecodableRequest):
                raise InvalidArgument.for_field("request", f"not a valid {request.type_name} message")
            if isinstance(request, Message):
                apply_request_defaults(request, self.default_limits)
                check_request(request)  # REQUIRED fields and declared bounds, named
            yield
        except grpc.aio.AbortError:
            code = _code_name(context)
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except ServiceError as exc:
            code = exc.code
            await abort_with_error(context, exc)
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors are caught
            code = "INTERNAL"
            log.error("unhandled exception in %s", method, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})")
        finally:
            self._finish(method, code, started)

    def _wrap_unary(self, method: str, behavior):
        async def wrapper(request, context):
            async with self._call(method, request, context):
                return await behavior(request, context)
        return wrapper

    async def _until_shutdown(self, stream, method: str):
        """Relay `stream`, but end it with UNAVAILABLE as soon as the server starts draining."""
        stop = self._shutdown_event()
        iterator = stream.__aiter__()
        stop_wait = asyncio.ensure_future(stop.wait())
        gauge = RPC_STREAMS_OPEN.labels(self.service, method.rsplit("/", 1)[-1])
        gauge.inc()
        next_item: asyncio.Future | None = None
        try:
            while True:
                next_item = asyncio.ensure_future(iterator.__anext__())
                await asyncio.wait({next_item, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if next_item.done():
                    try:
                        item = next_item.result()
                    except StopAsyncIteration:
                        return
                    yield item
                    continue
                next_item.cancel()
                with contextlib.suppress(BaseException):
                    await next_item
                raise Unavailable("the service is shutting down; reconnect to continue")
        finally:
            gauge.dec()
            stop_wait.cancel()
            if next_item is not None and not next_item.done():
                # The call was cancelled (client gone) while the handler was working: stop it now.
                next_item.cancel()
                with contextlib.suppress(BaseException):
                    await next_item
            if hasattr(iterator, "aclose"):
                with contextlib.suppress(BaseException):
                    await iterator.aclose()

    def _wrap_stream(self, method: str, behavior):
        async def wrapper(request, context):
            async with self._call(method, request, context):
                result = behavior(request, context)
                if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
                    async for item in self._until_shutdown(result, method):
                        yield item
                else:
                    await result
        return wrapper


def _code_name(context) -> str:
    try:
        code = context.code()
        return code.name if code is not None else "UNKNOWN"
    except Exception:  # noqa: BLE001
        return "UNKNOWN"


@dataclass
class ServiceRuntime:
    """What a service's `register` function gets: the server, its config, health control,
    and hooks to run on shutdown."""

    name: str
    config: Config
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)
    ready_later: bool = False
    shutdown_hooks: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    port: int = 0
    interceptor: RuntimeInterceptor | None = None

    async def set_serving(self, serving: bool = True) -> None:
        state = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", state)
        for name in self.service_names:
            await self.health.set(name, state)

    def limit_defaults(self, limits_by_type: DefaultLimits) -> None:
        """Hold documented defaults to this deployment's limits, per request type full name
        (`{"wintrain.inference.v1.ChatRequest": {"max_tokens": cap}}`): a client that did not
        name a field gets the limit, not a refusal of a value it never sent."""
        if self.interceptor is not None:
            for type_name, limits in limits_by_type.items():
                self.interceptor.default_limits.setdefault(type_name, {}).update(limits)

    def on_shutdown(self, hook: Callable[[], Awaitable[None] | None]) -> None:
        self.shutdown_hooks.append(hook)

    async def start(self) -> None:
        # A service that gets ready later (e.g. loading a model) must not look SERVING before.
        await self.set_serving(not self.ready_later)
        await self.server.start()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, stop accepting, let in-flight calls finish, run hooks."""
        grace = float(self.config.get("server.grace_seconds", 10)) if grace is None else grace
        await self.set_serving(False)
        if self.interceptor is not None:
            self.interceptor._shutdown_event().set()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for hook in reversed(self.shutdown_hooks):
            result = hook()
            if inspect.isawaitable(result):
                await result


class BindError(OSError):
    """A listening port that cannot be had; the message names the setting and the address
    (`services.data.metrics_port 127.0.0.1:9101: address already in use`)."""


def _bind_failure(setting: str, host: str, port: Any, exc: BaseException | None = None) -> BindError:
    reason = "cannot bind"
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror[:1].lower() + exc.strerror[1:]
    return BindError(f"{setting} {host}:{port}: {reason}")


def check_port_free(host: str, port: Any, setting: str) -> None:
    """Raise BindError when no address `host` resolves to can listen on `port` now, before
    grpc tries (it answers only "Failed to bind", after a C-level log line). Port 0: nothing
    to check."""
    if port in (None, 0, "0"):
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        raise _bind_failure(setting, host, port, exc) from exc
    last: OSError | None = None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return
            except OSError as exc:
                last = exc
    raise _bind_failure(setting, host, port, last)


# A service module provides: register(runtime) -> list of full service names it added.
Register = Callable[[ServiceRuntime], list[str]]


def create_server(
    config: Config,
    name: str,
    register: Register,
    *,
    port: int | None = None,
    host: str | None = None,
    guards: list[CallGuard] | None = None,
) -> tuple[ServiceRuntime, int]:
    """Build (not start) the server of service `name`. `port=0` binds a free port (tests).
    Returns the runtime and the bound port. Raises ConfigError when asked to listen on a
    public address with no API keys, OSError when the port cannot be bound."""
    bind_host = host or config.get(f"services.{name}.host", "127.0.0.1")
    keys = load_api_keys(config)
    check_bind_allowed(bind_host, f"services.{name}.host", config, keys)
    bind_port = config.get(f"services.{name}.port") if port is None else port
    check_port_free(bind_host, bind_port, f"services.{name}.port")
    max_bytes = int(config.get("server.max_message_bytes", 64 * 1024 * 1024))
    interceptor = RuntimeInterceptor(guards=[grpc_auth_guard(keys), *(guards or [])],
                                     observers=[rpc_observer(name)], service=name)
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    runtime = ServiceRuntime(name=name, config=config, server=server, health=health_servicer,
                             interceptor=interceptor)
    runtime.service_names = list(register(runtime))
    enable_reflection([*runtime.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server)
    tls = tls_server_files(config)
    try:
        if tls is not None:
            cert, key = tls
            credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            bound = server.add_secure_port(f"{bind_host}:{bind_port}", credentials)
        else:
            bound = server.add_insecure_port(f"{bind_host}:{bind_port}")
    except RuntimeError as exc:  # grpc's "Failed to bind to address" (taken since the check)
        raise _bind_failure(f"services.{name}.port", bind_host, bind_port) from exc
    if bound == 0:
        raise _bind_failure(f"services.{name}.port", bind_host, bind_port)
    runtime.port = bound
    return runtime, bound


async def serve(config: Config, name: str, register: Register) -> None:
    """Run service `name` until SIGTERM or SIGINT, then drain and return."""
    runtime, port = create_server(config, name, register)
    metrics_host = metrics_bind_host(config, name)
    metrics_setting = f"services.{name}.metrics_port"
    try:
        if config.get(metrics_setting) is not None:
            check_bind_allowed(metrics_host, f"services.{name}.metrics_host", config, load_api_keys(config))
        try:
            metrics_port = start_metrics_server(config.get(metrics_setting), metrics_host)
        except OSError as exc:
            raise _bind_failure(metrics_setting, metrics_host, config.get(metrics_setting), exc) from exc
        await runtime.start()
    except BaseException:
        # Stop the never-started server inside the loop, so nothing is left for its finalizer
        # to schedule on a closed loop ("Event loop is closed" at exit).
        await runtime.server.stop(None)
        raise
    log.info("serving", extra={"port": port, "metrics_port": metrics_port,
                                "services": ",".join(runtime.service_names)})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"grace_seconds": config.get("server.grace_seconds")})
    await runtime.stop()
    log.info("stopped")


def apply_torch_threads(config: Config) -> int | None:
    """Make `model.torch_threads` this process's CPU thread count, before torch is imported
    when possible (OMP_NUM_THREADS, which child processes inherit too) and through torch when
    it already is. Returns the count applied, or None when the setting is null."""
    import os
    import sys

    threads = config.get("model.torch_threads")
    if not threads:
        return None
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(threads))
    return int(threads)


def run_service(name: str, register: Register) -> None:
    """Entry point of `python -m services.<name>`: config (fail fast), logging, serve."""
    import sys

    from services.common.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"wintrain-{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    setup_logging(name, str(config.get("logging.level", "INFO")))
    apply_torch_threads(config)
    try:
        asyncio.run(serve(config, name, register))
    except ConfigError as exc:
        print(f"wintrain-{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    except OSError as exc:
        print(f"wintrain-{name}: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


def service_full_name(module: Any, service: str) -> str:
    """Full proto name of a service from a generated *_pb2 module."""
    return module.DESCRIPTOR.services_by_name[service].full_name

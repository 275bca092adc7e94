"""The one middleware every gateway request passes through (pure ASGI, so streams stay
streams): request id in and out, a log line per request (DEBUG when it succeeded, INFO for
4xx, WARNING for 5xx), and `RequestHooks`, the single extension point for authentication
(an `Authorization: Bearer` check) and metrics (Prometheus counters and latency histograms),
and `Retry-After` on every 429.
No auth is enforced by default.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import RETRY_AFTER_SECONDS
from services.common.logging_setup import new_request_id, request_id_var
from services.common.metadata import REQUEST_ID_KEY

log = logging.getLogger("wintrain.gateway")
# Every 429, whoever answers it (a backend's RESOURCE_EXHAUSTED, a stream refused before its
# first event, the OpenAI routes), says when to come back.
_RETRY_AFTER = str(RETRY_AFTER_SECONDS).encode("ascii")
# gRPC metadata values must be printable ASCII; anything else gets a fresh id.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


class RequestHooks:
    """Extension point for cross-cutting concerns. Subclass and pass to `create_app`.

    `authorize` runs before routing, for every HTTP request; return a Response to refuse the
    request (e.g. 401 without a valid bearer token), or None to let it through.
    `observe` runs once per finished request with the route template (e.g.
    `/api/train/status/{p0}`; the raw path when no route matched), the status and seconds taken.
    """

    async def authorize(self, scope: Scope, headers: Headers) -> Response | None:
        return None

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        return None


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, hooks: RequestHooks | None = None):
        self.app = app
        self.hooks = hooks or RequestHooks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        given = headers.get(REQUEST_ID_KEY, "")
        request_id = given if _VALID_REQUEST_ID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        raw_id = request_id.encode("ascii")
        status_holder = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                extra = [(REQUEST_ID_KEY.encode("ascii"), raw_id)]
                given = message.get("headers", [])
                if message["status"] == 429 and not any(k.lower() == b"retry-after" for k, _ in given):
                    extra.append((b"retry-after", _RETRY_AFTER))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            refusal = await self.hooks.authorize(scope, headers)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or scope.get("path", "")
            status = status_holder[0]
            self.hooks.observe(scope["method"], template, status, elapsed)
            # Every backend call is logged (with this request id) by the service itself, so a
            # successful request is logged here only at DEBUG: it keeps ~0.1 ms off each request.
            level = logging.WARNING if status >= 500 else logging.INFO if status >= 400 else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, "http", extra={
                    "method": scope["method"], "path": scope.get("path", ""), "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                })
            request_id_var.reset(token)

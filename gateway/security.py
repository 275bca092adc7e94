"""Authentication and Prometheus metrics for the gateway: the `RequestHooks` the app uses.

With API keys configured (`auth.*`, WINTRAIN_API_KEYS), every route but `/health` and the
static documentation and dashboard files needs `Authorization: Bearer <key>` (401 otherwise).
`/metrics` serves the Prometheus text format: requests by route and status, latency
histograms, open streams.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from gateway.errors import GatewayError, is_openai_path, openai_error_response
from gateway.middleware import RequestHooks
from services.common.auth import check_bearer
from services.common.errors import Unauthenticated
from services.common.metadata import AUTHORIZATION_KEY

HTTP_REQUESTS = Counter("wintrain_http_requests_total", "HTTP requests handled by the gateway",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("wintrain_http_request_duration_seconds", "HTTP request duration (streams: until closed)",
                         ["method", "route"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600))
HTTP_STREAMS_OPEN = Gauge("wintrain_http_streams_open", "Server-Sent Event streams open")

# Open without a key: liveness for probes, and static files that carry no data.
OPEN_PATHS = ("/health",)
OPEN_PREFIXES = ("/docs", "/ui", "/openapi.json")


class AuthMetricsHooks(RequestHooks):
    def __init__(self, keys: list[str]):
        self.keys = keys

    async def authorize(self, scope: Scope, headers: Headers) -> Response | None:
        if not self.keys:
            return None
        path = scope.get("path", "")
        if path in OPEN_PATHS or path == "/" or path.startswith(OPEN_PREFIXES):
            return None
        try:
            check_bearer(headers.get(AUTHORIZATION_KEY, ""), self.keys)
        except Unauthenticated as exc:
            if is_openai_path(path):
                return openai_error_response(GatewayError(exc.code, exc.message),
                                             headers={"WWW-Authenticate": "Bearer"})
            return JSONResponse({"success": False, "message": exc.message, "code": exc.code, "details": []},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        HTTP_REQUESTS.labels(method, route, str(status)).inc()
        HTTP_LATENCY.labels(method, route).observe(seconds)


async def metrics_endpoint(_request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

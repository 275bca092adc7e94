"""The gateway application: `create_app(config) -> Starlette`.

Routes: every annotated RPC (transcoder), `/v1/...` (OpenAI compatible), `GET /health`,
`GET /`, `GET /openapi.json`, `GET /docs` (Swagger UI served from the `swagger_ui_bundle`
package, so it works offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway import __version__
from gateway.errors import GatewayError, is_openai_path, openai_error_response
from gateway.security import metrics_endpoint
from gateway.middleware import GatewayMiddleware, RequestHooks
from gateway.openai_compat import OPENAPI_PATHS as OPENAI_PATHS
from gateway.openai_compat import OPENAPI_SCHEMAS as OPENAI_SCHEMAS
from gateway.openai_compat import OpenAICompat
from gateway.openai_ft import install as install_fine_tuning
from gateway.openapi import build_openapi, swagger_ui_dir, swagger_ui_html
from gateway.routes import RouteSpec, discover_routes
from gateway.responses import error_response, json_response
from gateway.transcoder import Backends, Transcoder
from services.common.config import SERVICE_NAMES, Config, ConfigError
from services.common.healthcheck import probe_async
from services.common.metadata import REQUEST_ID_KEY

log = logging.getLogger("wintrain.gateway")

HEALTH_PATHS = {
    "/health": {"get": {
        "tags": ["Gateway"], "operationId": "health", "summary": "gRPC health of every backend",
        "responses": {
            "200": {"description": "`{\"status\": \"healthy\", \"services\": {name: \"SERVING\"}}`",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
            "503": {"description": "Some backend is not SERVING: `{\"status\": \"unhealthy\", \"services\": {...}}`",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
        },
    }},
    "/": {"get": {
        "tags": ["Gateway"], "operationId": "root", "summary": "Service banner",
        "responses": {"200": {"description": "`{\"message\", \"version\", \"docs\", \"status\"}`",
                              "content": {"application/json": {"schema": {"type": "object", "properties": {
                                  "message": {"type": "string"}, "version": {"type": "string"},
                                  "docs": {"type": "string"}, "status": {"type": "string"}}}}}}},
    }},
}
HEALTH_SCHEMA = {"Health": {"type": "object", "required": ["status", "services"], "properties": {
    "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
    "services": {"type": "object", "additionalProperties": {"type": "string"},
                 "description": "gRPC health state of each backend: SERVING, NOT_SERVING, UNAVAILABLE…"},
}}}


def check_settings(config: Config) -> None:
    """Fail fast on a bad gateway setting (ConfigError names the key)."""
    for key in ("api.sse_first_event_wait_seconds", "api.health_timeout_seconds"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"config: {key} must be a number >= 0, got {value!r}")
    name = config.get("api.served_model_name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"config: api.served_model_name must be a non-empty string, got {name!r}")


class Gateway:
    """Holds what the routes share: config, backends, transcoder, cached OpenAPI document."""

    def __init__(self, config: Config, specs: list[RouteSpec] | None = None):
        check_settings(config)
        self.config = config
        self.specs = discover_routes() if specs is None else specs
        self.backends = Backends(config)
        self.transcoder = Transcoder(config, self.specs, self.backends)
        self.openai = OpenAICompat(self.transcoder)
        self.health_timeout = float(config.get("api.health_timeout_seconds", 2.0))
        self._openapi: bytes | None = None

    async def health(self, request: Request) -> Response:
        names = list(SERVICE_NAMES)
        states = await asyncio.gather(*(self._check(name) for name in names))
        services = dict(zip(names, states))
        healthy = all(state == "SERVING" for state in states)
        return json_response({"status": "healthy" if healthy else "unhealthy", "services": services},
                             200 if healthy else 503)

    async def _check(self, name: str) -> str:
        # SERVING when any replica is; otherwise what a replica says (NOT_SERVING) or UNAVAILABLE.
        state = await probe_async(self.backends.channel(name), timeout=self.health_timeout)
        if state == "SERVING":
            return state
        return await probe_async(self.backends.probe_channel(name), timeout=self.health_timeout)

    async def root(self, request: Request) -> Response:
        return json_response({"message": "Win-Train API", "version": __version__, "docs": "/docs", "status": "running"})

    def openapi_document(self) -> dict:
        return build_openapi(self.specs, __version__, extra_paths={**HEALTH_PATHS, **OPENAI_PATHS},
                             extra_schemas={**HEALTH_SCHEMA, **OPENAI_SCHEMAS})

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            from gateway.errors import dumps

            # protoc runs once, off the event loop.
            self._openapi = dumps(await asyncio.to_thread(self.openapi_document))
        return Response(self._openapi, media_type="application/json")

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(swagger_ui_html("/openapi.json", "/docs/static"))


def _error_handlers():
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "INVALID_ARGUMENT")
        err = GatewayError(code, f"{request.method} {request.url.path}: {exc.detail}")
        response = openai_error_response(err) if is_openai_path(request.url.path) else error_response(err)
        response.status_code = exc.status_code
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    async def server_fault(request: Request, exc: Exception) -> Response:
        log.error("unhandled exception on %s %s", request.method, request.url.path, exc_info=exc)
        rid = request.scope.get("state", {}).get("request_id", "")
        err = GatewayError("INTERNAL", f"internal error (request id {rid})")
        response = openai_error_response(err) if is_openai_path(request.url.path) else error_response(err)
        response.headers[REQUEST_ID_KEY] = rid
        return response

    return {HTTPException: http_error, Exception: server_fault}


def create_app(config: Config, hooks: RequestHooks | None = None, specs: list[RouteSpec] | None = None) -> Starlette:
    """The gateway as an ASGI app. `hooks` is the auth/metrics extension point; `specs`
    (default: discovered from the five services' stubs) is for tests."""
    gateway = Gateway(config, specs)
    if hooks is None:
        from gateway.security import AuthMetricsHooks
        from services.common.auth import load_api_keys

        hooks = AuthMetricsHooks(load_api_keys(config))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("gateway routes", extra={"routes": len(gateway.specs),
                                          "backends": ",".join(f"{k}={v}" for k, v in gateway.backends.addresses.items())})
        gateway.openai_ft.resume_pending()  # jobs a restart left in validating_files (issue 19)
        try:
            yield
        finally:
            gateway.openai_ft.stop()  # an unfinished validation is taken up again at the next start
            await gateway.backends.close()

    routes = [
        Route("/health", gateway.health, methods=["GET"], name="health"),
        Route("/", gateway.root, methods=["GET"], name="root"),
        Route("/openapi.json", gateway.openapi, methods=["GET"], name="openapi"),
        Route("/docs", gateway.docs, methods=["GET"], name="docs"),
        Route("/metrics", metrics_endpoint, methods=["GET"], name="metrics"),
        Mount("/docs/static", app=StaticFiles(directory=swagger_ui_dir()), name="swagger-ui"),
        # The dashboard (static files of gateway/ui/, issue 10).
        Mount("/ui", app=StaticFiles(directory=Path(__file__).parent / "ui", html=True), name="ui"),
        *gateway.openai.routes(),
        *install_fine_tuning(gateway),  # /v1/files, /v1/fine_tuning/jobs (issue 19)
        *gateway.transcoder.routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(GatewayMiddleware, hooks=hooks)],
        exception_handlers=_error_handlers(),
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app

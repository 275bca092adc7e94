"""The command line's one client module: gRPC connections (one channel per service) and the
gateway's HTTP API (`HttpClient`, which `cli.demo` and `wintrain status` use), with addresses
and API key from the configuration, and failed calls turned into one readable line.

Exit codes of every `wintrain` command (also in `wintrain --help`):

    0    success; for `train start --follow` / `train watch`: the task completed
    1    the server refused or failed the request, validation found bad rows,
         or the watched task failed
    2    bad command line (argparse, `--set`, `--split`)
    3    the watched task was interrupted (its service died; `train resume` continues it)
    69   a service (or the gateway) cannot be reached
    130  the watched task was cancelled, or Ctrl-C stopped the command
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import grpc

import services  # noqa: F401  (puts the generated stubs on sys.path)
from services.common.auth import open_channel
from services.common.balancing import channel_options
from services.common.auth import client_metadata, gateway_url, https_verify
from services.common.config import Config
from services.common.rpc_status import decode_rpc_error
from wintrain.data.v1 import data_pb2_grpc
from wintrain.eval.v1 import eval_pb2_grpc
from wintrain.export.v1 import export_pb2_grpc
from wintrain.inference.v1 import inference_pb2_grpc
from wintrain.train.v1 import train_pb2_grpc

if TYPE_CHECKING:
    import httpx

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3
EXIT_UNREACHABLE = 69
EXIT_CANCELLED = 130

_STUBS = {
    "data": data_pb2_grpc.DataServiceStub,
    "train": train_pb2_grpc.TrainServiceStub,
    "inference": inference_pb2_grpc.InferenceServiceStub,
    "eval": eval_pb2_grpc.EvalServiceStub,
    "export": export_pb2_grpc.ExportServiceStub,
}


@dataclass
class CliError(Exception):
    """A failure to report as one line (or one JSON object) and an exit code."""

    message: str
    exit_code: int = EXIT_ERROR
    code: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.code}: {self.message}" if self.code else self.message
        # The server's message usually names the fields already ("config.x: must be > 0").
        missing = [(f, d) for f, d in self.details if f and f not in self.message]
        if missing:
            text += " [" + "; ".join(f"{f}: {d}" for f, d in missing) + "]"
        return text

    def as_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code or "CLIENT_ERROR", "message": self.message,
                          "details": [{"field": f, "description": d} for f, d in self.details]}}


class Clients:
    """Lazily opened channels and stubs of the five services."""

    def __init__(self, config: Config, timeout: float | None = None):
        self.config = config
        self.timeout = timeout  # --timeout: replaces every unary call's default deadline
        self.metadata = client_metadata(config)
        self._channels: dict[tuple[str, bool], grpc.Channel] = {}
        max_bytes = int(config.get("server.max_message_bytes", 64 * 1024 * 1024))
        self._options = [("grpc.max_receive_message_length", max_bytes),
                         ("grpc.max_send_message_length", max_bytes)]

    def address(self, name: str) -> str:
        """The gRPC target of service `name`: host:port, a DNS name, or its replicas."""
        return self.config.service_target(name)

    def channel(self, name: str, health_check: bool = True) -> grpc.Channel:
        """round_robin over the service's SERVING replicas (services.common.balancing);
        `health_check=False` reaches replicas whatever their health (for `wintrain status`)."""
        key = (name, health_check)
        if key not in self._channels:
            options = self._options + channel_options(health_check)
            self._channels[key] = open_channel(self.config, self.address(name), options=options)
        return self._channels[key]

    def stub(self, name: str):
        return _STUBS[name](self.channel(name))

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def reachable(self, name: str, timeout: float = 1.0) -> bool:
        try:
            grpc.channel_ready_future(self.channel(name, health_check=False)).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False

    def error(self, name: str, exc: grpc.RpcError) -> CliError:
        """The CliError of a failed call to service `name`."""
        failure = decode_rpc_error(exc)
        if failure.code == "UNAVAILABLE" and not self.reachable(name):
            return CliError(
                f"cannot reach the {name} service at {self.address(name)}; is Win-Train running? "
                "(start it with `wintrain up`; addresses come from --config / WINTRAIN__SERVICES__…)",
                EXIT_UNREACHABLE, "UNAVAILABLE")
        if failure.code == "CANCELLED":
            return CliError(failure.message or "cancelled", EXIT_CANCELLED, failure.code)
        return CliError(failure.message or failure.code, EXIT_ERROR, failure.code, list(failure.field_violations))

    def call(self, name: str, method: str, request, timeout: float | None = 60.0):
        """A unary call; raises CliError on failure."""
        try:
            return getattr(self.stub(name), method)(request, timeout=self.timeout or timeout,
                                                    metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self.error(name, exc) from None

    def stream(self, name: str, method: str, request, timeout: float | None = None):
        """A server-streaming call (the call object: iterate it, `.cancel()` it)."""
        return getattr(self.stub(name), method)(request, timeout=timeout, metadata=self.metadata)


class HttpClient:
    """The gateway's HTTP API: JSON calls, the response envelope and Server-Sent Events, with
    the gateway's error body (or a transport failure) raised as CliError."""

    def __init__(self, config: Config, base_url: str | None = None, timeout: float = 30.0):
        self.base_url = (base_url or gateway_url(config)).rstrip("/")
        import httpx  # here, not at the top: every other command starts without it

        self._httpx = httpx
        headers = {k.title(): v for k, v in client_metadata(config)}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, verify=https_verify(config),
                                   timeout=httpx.Timeout(timeout, read=3600.0))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _error(resp: httpx.Response) -> CliError:
        try:
            body = resp.json()
        except ValueError:
            return CliError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        if not isinstance(body, dict):
            return CliError(f"HTTP {resp.status_code}: {body!r:.300}")
        details = [(str(d.get("field")), str(d.get("description", ""))) for d in body.get("details") or []
                   if isinstance(d, dict) and d.get("field")]
        return CliError(f"HTTP {resp.status_code}: {body.get('message', '')}", EXIT_ERROR,
                        str(body.get("code", "")), details)

    def _transport(self, method: str, path: str, exc: httpx.HTTPError) -> CliError:
        unreachable = isinstance(exc, self._httpx.ConnectError)
        return CliError(f"{method} {path} at {self.base_url}: {type(exc).__name__}: {exc}",
                        EXIT_UNREACHABLE if unreachable else EXIT_ERROR, "UNAVAILABLE" if unreachable else "")

    def request(self, method: str, path: str, **kwargs) -> Any:
        """A call answering JSON: the decoded body."""
        try:
            resp = self.client.request(method, path, **kwargs)
        except self._httpx.HTTPError as exc:
            raise self._transport(method, path, exc) from None
        if resp.status_code >= 400:
            raise self._error(resp)
        return resp.json()

    def envelope(self, method: str, path: str, **kwargs) -> Any:
        """An endpoint answering {success, message, data, timestamp}: the whole body, checked."""
        body = self.request(method, path, **kwargs)
        if not isinstance(body, dict) or "data" not in body or "success" not in body:
            raise CliError(f"{path}: expected the response envelope, got {str(body)[:200]}")
        return body

    def sse(self, method: str, path: str, **kwargs) -> Iterator[dict]:
        """The events of a Server-Sent Events endpoint, until `[DONE]`. An error event raises."""
        try:
            with self.client.stream(method, path, **kwargs) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(resp)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    event = json.loads(payload)
                    if isinstance(event, dict) and "error" in event:
                        err = event["error"] if isinstance(event["error"], dict) else {"message": event["error"]}
                        raise CliError(f"stream error: {err.get('message', err)}", EXIT_ERROR,
                                       str(err.get("code", "")))
                    yield event
        except self._httpx.HTTPError as exc:
            raise self._transport(method, path, exc) from None
        raise CliError(f"{path}: the event stream ended without [DONE]")

    def health(self, timeout: float = 3.0) -> tuple[int, dict]:
        """GET /health: the status code and the JSON body ({} when it is not JSON). A transport
        failure raises httpx.HTTPError."""
        resp = self.client.get("/health", timeout=timeout)
        body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        return resp.status_code, body if isinstance(body, dict) else {}

    def healthy(self, timeout: float = 3.0) -> bool:
        try:
            code, body = self.health(timeout)
        except (self._httpx.HTTPError, ValueError):
            return False
        return code == 200 and body.get("status") == "healthy"

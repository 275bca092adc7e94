"""gRPC connections of the command line: one channel per service, addresses and API key from
the configuration, and failed calls turned into one readable line.

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

from dataclasses import dataclass, field
from typing import Any

import grpc

import services  # noqa: F401  (puts the generated stubs on sys.path)
from services.common.auth import open_channel
from services.common.auth import client_metadata
from services.common.config import Config
from services.common.rpc_status import decode_rpc_error
from wintrain.data.v1 import data_pb2_grpc
from wintrain.eval.v1 import eval_pb2_grpc
from wintrain.export.v1 import export_pb2_grpc
from wintrain.inference.v1 import inference_pb2_grpc
from wintrain.train.v1 import train_pb2_grpc

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
        self._channels: dict[str, grpc.Channel] = {}
        max_bytes = int(config.get("server.max_message_bytes", 64 * 1024 * 1024))
        self._options = [("grpc.max_receive_message_length", max_bytes),
                         ("grpc.max_send_message_length", max_bytes)]

    def address(self, name: str) -> str:
        return self.config.service_address(name)

    def channel(self, name: str) -> grpc.Channel:
        if name not in self._channels:
            address = self.address(name)
            self._channels[name] = open_channel(self.config, address, options=self._options)
        return self._channels[name]

    def stub(self, name: str):
        return _STUBS[name](self.channel(name))

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def reachable(self, name: str, timeout: float = 1.0) -> bool:
        try:
            grpc.channel_ready_future(self.channel(name)).result(timeout=timeout)
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

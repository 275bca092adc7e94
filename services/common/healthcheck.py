"""The one gRPC health probe (standard grpc.health.v1), used by the launcher, the gateway's
`/health`, `wintrain status` and container health checks.

`probe(channel)` / `probe_async(channel)` answer the serving state by name (`SERVING`,
`NOT_SERVING`…) or, when the call fails, the gRPC code (`UNAVAILABLE`, `DEADLINE_EXCEEDED`…).

As a command: `python -m services.common.healthcheck HOST:PORT [SERVICE]` exits 0 when the
server answers SERVING, 1 otherwise. It reads the same config as the services (WINTRAIN_CONFIG /
WINTRAIN__… overrides), so with `tls.*` set it checks over TLS; without a readable config it
probes in plaintext."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"
# Answers that mean "nothing there" rather than "there, and not well".
UNREACHABLE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def _request(service: str) -> health_pb2.HealthCheckRequest:
    return health_pb2.HealthCheckRequest(service=service)


def _state(reply: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _failure(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else "UNKNOWN"


def probe(channel: grpc.Channel, service: str = "", timeout: float = 3.0) -> str:
    """Serving state of `service` ("" = the whole server) behind a blocking channel."""
    try:
        return _state(health_pb2_grpc.HealthStub(channel).Check(_request(service), timeout=timeout))
    except grpc.RpcError as exc:
        return _failure(exc)


async def probe_async(channel: grpc.aio.Channel, service: str = "", timeout: float = 3.0) -> str:
    """`probe` over an asyncio channel."""
    try:
        return _state(await health_pb2_grpc.HealthStub(channel).Check(_request(service), timeout=timeout))
    except grpc.RpcError as exc:
        return _failure(exc)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m services.common.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    address, service = args[0], (args[1] if len(args) > 1 else "")
    from services.common.auth import open_channel
    from services.common.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError:
        config = None
    try:
        with (open_channel(config, address) if config is not None else grpc.insecure_channel(address)) as channel:
            state = probe(channel, service)
    except OSError as exc:  # the configured TLS root cannot be read
        print(f"{address}: cannot read the TLS certificate: {exc}", file=sys.stderr)
        return 1
    print(f"{address}: {state}", file=sys.stdout if state in health_pb2.HealthCheckResponse.ServingStatus.keys()
          else sys.stderr)
    return 0 if state == SERVING else 1


if __name__ == "__main__":
    raise SystemExit(main())

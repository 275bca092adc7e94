"""gRPC health probe for container health checks: `python -m services.common.healthcheck
HOST:PORT [SERVICE]` exits 0 when the server answers SERVING, 1 otherwise.

It reads the same config as the services (WINTRAIN_CONFIG / WINTRAIN__… overrides), so with
`tls.*` set it checks over TLS; without a readable config it probes in plaintext."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except grpc.RpcError as exc:
        print(f"{address}: {exc.code().name}", file=sys.stderr)
        return 1
    except OSError as exc:  # the configured TLS root cannot be read
        print(f"{address}: cannot read the TLS certificate: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(f"{address}: {status}")
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m gateway`: serve the gateway on config `api.host`:`api.port` (default 8801)."""

from __future__ import annotations

import sys


def main() -> int:
    from services.common.config import ConfigError, load_config
    from services.common.logging_setup import setup_logging

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"wintrain-gateway: {exc}", file=sys.stderr)
        return 2
    setup_logging("gateway", str(config.get("logging.level", "INFO")))

    import uvicorn

    from gateway.app import create_app
    from services.common.auth import check_bind_allowed, load_api_keys, tls_server_files

    host = str(config.get("api.host", "127.0.0.1"))
    try:
        check_bind_allowed(host, "api.host", config, load_api_keys(config))
        files = tls_server_files(config)
        app = create_app(config)
    except ValueError as exc:  # a bad setting or http annotation (ConfigError too): fail fast, naming it
        print(f"wintrain-gateway: {exc}", file=sys.stderr)
        return 2
    tls = {"ssl_certfile": str(files[0]), "ssl_keyfile": str(files[1])} if files else {}
    port = int(config.get("api.port", 8801))
    try:  # a port that cannot be had: one line naming the setting, exit 1 (as the services do)
        from services.common.server import check_port_free

        check_port_free(host, port, "api.port")
    except OSError as exc:
        print(f"wintrain-gateway: {exc}", file=sys.stderr)
        return 1
    server = _quiet_server(uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # our JSON logging
        access_log=False,  # the gateway middleware logs each request
        timeout_graceful_shutdown=float(config.get("server.grace_seconds", 10)),
        lifespan="on",
        **tls,
    ))
    server.run()
    return 0 if server.started else 1



def _quiet_server(config):
    """uvicorn's Server, minus re-raising SIGTERM after a graceful drain, so a drained gateway
    exits 0 like every service."""
    import contextlib

    import uvicorn

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return QuietServer(config)


if __name__ == "__main__":
    raise SystemExit(main())

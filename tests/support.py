"""Helpers for tests: configs on a temporary workspace, in-process gRPC servers on free ports,
and real service processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from services.common.config import REPO_ROOT, Config, load_config
from services.common.server import Register, create_server

PYTHON = sys.executable


def make_config(workspace: Path, base_model: Path, **overrides: Any) -> Config:
    """Repository config with a temporary workspace, the test tiny model as base, and every
    service on port 0."""
    values = {
        "storage.workspace": str(workspace),
        "storage.allowed_roots": [str(workspace)],
        "model.base_model_path": str(base_model),
        "inference.auto_load": False,
        "server.grace_seconds": 2,
    }
    for name in ("data", "train", "inference", "eval", "export"):
        values[f"services.{name}.port"] = 0
        values[f"services.{name}.metrics_port"] = None
    values.update(overrides)
    workspace.mkdir(parents=True, exist_ok=True)
    return load_config(REPO_ROOT / "config.yaml", env={}).with_overrides(values)


@contextlib.contextmanager
def all_services(config: Config):
    """data, train, inference, eval and export as real in-process gRPC servers on free ports;
    yields {name: InProcessServer}. Stopped in reverse order on exit."""
    import importlib

    from services.common.config import SERVICE_NAMES

    with contextlib.ExitStack() as started:
        servers = {}
        for name in SERVICE_NAMES:
            register = importlib.import_module(f"services.{name}.server").register
            servers[name] = started.enter_context(InProcessServer(config, name, register))
        yield servers


class InProcessServer:
    """A real grpc.aio server of one service, on a free port, run by an event loop in a
    background thread. Use it as a context manager; `channel()` gives a sync channel."""

    def __init__(self, config: Config, name: str, register: Register):
        self.config, self.name, self.register = config, name, register
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runtime = None
        self.port = 0
        self._channels: list[grpc.Channel] = []

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> "InProcessServer":
        self.thread.start()

        async def start():
            runtime, port = create_server(self.config, self.name, self.register, port=0)
            await runtime.start()
            return runtime, port

        self.runtime, self.port = self.call(start())
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.address)
        self._channels.append(ch)
        return ch

    def stop(self, grace: float = 1.0) -> None:
        if self.runtime is not None:
            self.call(self.runtime.stop(grace))
            self.runtime = None

    def __exit__(self, *exc) -> None:
        for ch in self._channels:
            ch.close()
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free now for a process that binds it later. Chosen below the kernel's ephemeral
    range, so the outgoing connections of the very processes being started (health checks, a
    gateway dialing its backends) cannot take it first, and never the same one twice."""
    import random

    high = _ephemeral_low()
    for _ in range(200):
        port = random.randint(max(1024, high - 12000), high - 1)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # a crowded range: let the kernel pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(config_overrides: dict[str, Any]) -> dict[str, str]:
    """Environment for a real service process with `WINTRAIN__…` overrides."""
    import json

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for dotted, value in config_overrides.items():
        key = "WINTRAIN__" + "__".join(part.upper() for part in dotted.split("."))
        env[key] = value if isinstance(value, str) else json.dumps(value)
    return env


def wait_until(predicate, timeout: float, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; the last answer counts."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_for_health(address: str, timeout: float = 60.0, service: str = "") -> None:
    """Block until the gRPC health check at `address` answers SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.2)
    raise TimeoutError(f"{address} not SERVING after {timeout}s ({last})")


def wait_for_line(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """Read `proc`'s text stdout until a line contains `marker` (or it ends, or `timeout`);
    return the lines read."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            break
    return lines


def tail_logs(log_dir: Path, chars: int = 3000) -> str:
    """The end of every *.log in `log_dir`, for assertion messages."""
    return "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-chars:]
                     for log in sorted(Path(log_dir).glob("*.log")))


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process by the caller
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)

"""`python -m gateway` as a real process: serves on api.port, talks to the configured
backends, stops cleanly on SIGTERM, and refuses a bad setting at start-up naming it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from gateway.app import create_app
from services.common.config import REPO_ROOT, ConfigError
from tests.support import free_port, service_env, start_process


def test_python_m_gateway_serves_and_stops_on_sigterm(fake_backend, tmp_path):
    port = free_port()
    overrides = {"api.port": port, "logging.level": "INFO"}
    overrides.update({f"services.{name}.port": fake_backend.port for name in ("data", "train", "inference", "eval", "export")})
    proc = start_process([sys.executable, "-m", "gateway"], service_env(overrides), tmp_path / "gateway.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
                assert time.monotonic() < deadline, "gateway did not come up"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["status"] == "healthy"
        r = httpx.get(f"http://127.0.0.1:{port}/api/train/status/t-1")
        assert r.status_code == 200 and r.json()["status"] == "running"
        r = httpx.get(f"http://127.0.0.1:{port}/api/train/status/missing", headers={"X-Request-Id": "main-test-1"})
        assert r.status_code == 404 and r.headers["x-request-id"] == "main-test-1"
        proc.send_signal(signal.SIGTERM)
        # Drained: exits 0 like every service.
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    log = (tmp_path / "gateway.log").read_text()
    assert '"request_id": "main-test-1"' in log  # the 4xx is logged, with the caller's request id
    assert "Application shutdown complete" in log  # a graceful stop, not a kill


def test_bad_setting_fails_fast_naming_it(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gateway"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=service_env({"api.port": "not-a-port"}), timeout=60)
    assert result.returncode == 2
    assert "api.port" in result.stderr


def test_bad_gateway_setting_is_refused_at_create_app(base_config):
    with pytest.raises(ConfigError, match="api.sse_first_event_wait_seconds"):
        create_app(base_config.with_overrides({"api.sse_first_event_wait_seconds": "soon"}))

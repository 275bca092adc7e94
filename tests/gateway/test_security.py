"""Issue 9 at the edge: API keys over HTTP (and passed on to the real services), /metrics,
and the refusal to listen publicly without keys."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest

from services.common.config import REPO_ROOT
from services.data.server import register as register_data
from tests.gateway.helpers import GatewayServer, point_gateway_at
from tests.support import InProcessServer, make_config, service_env

SAMPLE = REPO_ROOT / "services" / "common" / "assets" / "datasets" / "train_sample.jsonl"
KEY = "test-key-123"


@pytest.fixture
def secured(tmp_path):
    cfg = make_config(tmp_path / "ws", tmp_path / "no-model", **{"auth.api_keys": [KEY]})
    shutil.copy(SAMPLE, cfg.workspace / "sample.jsonl")
    with InProcessServer(cfg, "data", register_data) as data:
        with GatewayServer(point_gateway_at(cfg, {"data": data.port})) as gw:
            with httpx.Client(base_url=gw.url, timeout=20) as client:
                yield client


def test_api_needs_the_bearer_key(secured):
    url = "/api/data/validate?file_path=sample.jsonl"
    r = secured.post(url)
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHENTICATED"
    assert secured.post(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert secured.post(url, headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    r = secured.post(url, headers={"Authorization": f"Bearer {KEY}"})
    # 200 proves the gateway also presented a key to the data service, which requires one too.
    assert r.status_code == 200 and r.json()["data"]["total_samples"] == 5
    assert secured.get("/metrics").status_code == 401
    assert secured.get("/v1/models").status_code == 401


def test_health_and_docs_stay_open(secured):
    assert secured.get("/health").status_code in (200, 503)  # open: answers, never 401
    assert secured.get("/openapi.json").status_code == 200
    assert secured.get("/docs").status_code == 200


def test_metrics_move_after_calls(secured):
    auth = {"Authorization": f"Bearer {KEY}"}

    def count() -> float:
        text = secured.get("/metrics", headers=auth).text
        for line in text.splitlines():
            if line.startswith("wintrain_http_requests_total{") and 'route="/api/data/validate"' in line \
                    and 'status="200"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    for _ in range(3):
        assert secured.post("/api/data/validate?file_path=sample.jsonl", headers=auth).status_code == 200
    text = secured.get("/metrics", headers=auth).text
    assert count() == before + 3
    assert "wintrain_http_request_duration_seconds_bucket" in text and "wintrain_http_streams_open" in text


def test_gateway_refuses_a_public_bind_without_keys(tmp_path):
    env = service_env({"api.host": "0.0.0.0", "storage.workspace": str(tmp_path)})
    env.pop("WINTRAIN_API_KEYS", None)
    proc = subprocess.run([sys.executable, "-m", "gateway"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "api.host" in proc.stderr and "api_keys" in proc.stderr and "allow_insecure_public" in proc.stderr

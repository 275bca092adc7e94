"""Fixtures of the gateway unit tests: fake backends (one real grpc.aio server hosting fake
Data/Train/Inference servicers) behind the real gateway served by uvicorn."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.helpers import FakeState, GatewayServer, all_at, fake_register
from tests.support import InProcessServer, make_config


@pytest.fixture(scope="module")
def fake_state() -> FakeState:
    return FakeState()


@pytest.fixture(scope="module")
def base_config(tmp_path_factory):
    ws = tmp_path_factory.mktemp("gw") / "ws"
    return make_config(ws, ws / "no-model", **{"api.default_deadline_seconds": 5,
                                                "api.max_body_bytes": 4096,
                                                "api.sse_first_event_wait_seconds": 0.5})


@pytest.fixture(scope="module")
def fake_backend(base_config, fake_state):
    with InProcessServer(base_config, "data", fake_register(fake_state)) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(base_config, fake_backend):
    with GatewayServer(all_at(base_config, fake_backend.port)) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c

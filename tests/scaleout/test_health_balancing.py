"""Health-checked round_robin (services.common.balancing) with two real in-process inference
servers behind one gateway and one CLI client: a replica that turns NOT_SERVING gets no new
calls until it is SERVING again; /health and `wintrain status` say SERVING while one replica is,
and NOT_SERVING (not UNAVAILABLE) when none is."""

from __future__ import annotations

import httpx
import pytest

from cli.client import Clients
from services.common.config import ConfigError
from services.common.healthcheck import probe
from services.inference.server import InferenceServicer, register
from tests.gateway.helpers import GatewayServer
from tests.support import InProcessServer, wait_until
from wintrain.inference.v1 import inference_pb2 as pb


class CountingServicer(InferenceServicer):
    """The real servicer, counting the ListModels calls it answers."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = 0

    async def ListModels(self, request, context):
        self.calls += 1
        return await super().ListModels(request, context)


@pytest.fixture
def two_replicas(config):
    servicers = [CountingServicer(config), CountingServicer(config)]
    with InProcessServer(config, "inference", lambda rt: register(rt, servicers[0])) as a, \
            InProcessServer(config, "inference", lambda rt: register(rt, servicers[1])) as b:
        yield [a, b], servicers, config.with_overrides({"services.inference.addresses": [a.address, b.address]})


def _spread(call, servicers, n: int) -> list[int]:
    before = [s.calls for s in servicers]
    for _ in range(n):
        call()
    return [s.calls - b for s, b in zip(servicers, before)]


def test_gateway_skips_a_not_serving_replica_and_takes_it_back(two_replicas):
    servers, servicers, config = two_replicas
    with GatewayServer(config) as gw, httpx.Client(base_url=gw.url, timeout=30) as http:
        def call():
            r = http.get("/api/inference/models")
            assert r.status_code == 200, r.text

        assert min(_spread(call, servicers, 10)) >= 3
        servers[0].call(servers[0].runtime.set_serving(False))
        # The gateway's subchannel watches Health/Watch: it leaves the rotation within moments.
        assert wait_until(lambda: _spread(call, servicers, 4)[0] == 0, timeout=10)
        assert _spread(call, servicers, 20) == [0, 20]
        assert http.get("/health").json()["services"]["inference"] == "SERVING"

        servers[1].call(servers[1].runtime.set_serving(False))
        health = http.get("/health")
        assert health.status_code == 503
        assert health.json()["services"]["inference"] == "NOT_SERVING"
        r = http.get("/api/inference/models")
        assert r.status_code == 503, r.text

        servers[0].call(servers[0].runtime.set_serving(True))
        servers[1].call(servers[1].runtime.set_serving(True))
        assert wait_until(lambda: min(_spread(call, servicers, 6)) >= 1, timeout=10)


def test_cli_balances_over_the_same_addresses(two_replicas):
    servers, servicers, config = two_replicas
    clients = Clients(config)
    try:
        call = lambda: clients.call("inference", "ListModels", pb.ListModelsRequest(), timeout=10)  # noqa: E731
        assert clients.address("inference") == f"ipv4:{servers[0].address},{servers[1].address}"
        assert min(_spread(call, servicers, 10)) >= 3
        servers[1].call(servers[1].runtime.set_serving(False))
        assert wait_until(lambda: _spread(call, servicers, 4)[1] == 0, timeout=10)
        assert _spread(call, servicers, 10) == [10, 0]
        assert probe(clients.channel("inference")) == "SERVING"
        servers[0].call(servers[0].runtime.set_serving(False))
        assert probe(clients.channel("inference", health_check=False)) == "NOT_SERVING"
    finally:
        clients.close()


@pytest.mark.parametrize("value, message", [
    ("a.example:1,b.example:2", "names a host"),
    ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
    ("::1:50053", "not host:port"),
    ("127.0.0.1:1,,127.0.0.1:2", "empty address"),
    ("dns:///x:1,127.0.0.1:2", None),  # a target URI is taken whole (gRPC parses it)
    (7, "must be a list"),
])
def test_bad_addresses_name_the_key(config, value, message):
    if message is None:
        assert config.with_overrides({"services.inference.addresses": value}).service_target("inference") == value
        return
    with pytest.raises(ConfigError) as info:
        config.with_overrides({"services.inference.addresses": value})
    assert "services.inference.addresses" in str(info.value) and message in str(info.value)


def test_addresses_forms(config):
    def target(value):
        return config.with_overrides({"services.train.addresses": value}).service_target("train")

    assert target(None) == config.service_address("train")
    assert target("10.0.0.1:50052, 10.0.0.2:50052") == "ipv4:10.0.0.1:50052,10.0.0.2:50052"
    assert target(["[fd00::1]:50052", "[fd00::2]:50052"]) == "ipv6:[fd00::1]:50052,[fd00::2]:50052"
    assert target("train-headless.wintrain.svc:50052") == "train-headless.wintrain.svc:50052"
    assert target("ipv4:127.0.0.1:50061,127.0.0.1:50062") == "ipv4:127.0.0.1:50061,127.0.0.1:50062"

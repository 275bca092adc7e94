"""cli.client.HttpClient, the CLI's one HTTP client (the demo and `wintrain status` use it),
against a real gateway over a real data service: the envelope, the gateway's error body and
a transport failure each come back as what the CLI reports."""

from __future__ import annotations

import json

import pytest

from cli.client import EXIT_ERROR, EXIT_UNREACHABLE, CliError, HttpClient
from services.data.server import register
from tests.gateway.helpers import gateway_over
from tests.support import InProcessServer, free_port, make_config


@pytest.fixture(scope="module")
def http(tmp_path_factory, tiny_model_dir):
    ws = tmp_path_factory.mktemp("ws")
    (ws / "good.jsonl").write_text(json.dumps({"conversations": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    cfg = make_config(ws, tiny_model_dir)
    with InProcessServer(cfg, "data", register) as data, gateway_over(cfg, {"data": data}) as gw:
        client = HttpClient(cfg, gw.url)
        yield client
        client.close()


def test_envelope_and_health(http):
    body = http.envelope("POST", "/api/data/validate", params={"file_path": "good.jsonl"})
    assert body["success"] is True and body["data"]["valid_samples"] == 1
    code, health = http.health()  # only the data service is up
    assert code == 503 and health["status"] != "healthy"
    assert http.healthy() is False


def test_gateway_error_body_becomes_one_line_naming_the_field(http):
    with pytest.raises(CliError) as err:
        http.request("POST", "/api/data/validate", params={"file_path": "missing.jsonl"})
    exc = err.value
    assert exc.code == "NOT_FOUND" and exc.exit_code == EXIT_ERROR
    assert exc.message.startswith("HTTP 404: ")
    assert "file_path" in exc.line()


def test_unreachable_gateway(tmp_path, tiny_model_dir):
    client = HttpClient(make_config(tmp_path, tiny_model_dir), f"http://127.0.0.1:{free_port()}")
    try:
        assert client.healthy() is False
        with pytest.raises(CliError) as err:
            list(client.sse("GET", "/api/train/watch/abc"))
        assert err.value.exit_code == EXIT_UNREACHABLE and err.value.code == "UNAVAILABLE"
    finally:
        client.close()

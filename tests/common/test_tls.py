"""Optional TLS: with tls.cert_file/key_file a service serves TLS only, and our own clients
(gateway, launcher, CLI) connect with the configured root."""

from __future__ import annotations

import datetime
import ipaddress
import signal
import ssl
import subprocess
import sys

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.auth import open_channel
from tests.gateway.helpers import GatewayServer, point_gateway_at
from services.common.config import REPO_ROOT
from tests.support import InProcessServer, free_port, make_config, service_env, tail_logs, wait_for_line
from services.data.server import register as register_data


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_grpc_service_serves_tls_and_our_clients_use_it(tmp_path):
    cert, key = _self_signed(tmp_path)
    cfg = make_config(tmp_path / "ws", tmp_path / "no-model", **{"tls.cert_file": str(cert), "tls.key_file": str(key)})
    with InProcessServer(cfg, "data", register_data) as server:
        with open_channel(cfg, server.address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(server.address) as plain:
            with pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
        # The gateway talks TLS to the backend (plain HTTP to the test client here).
        (cfg.workspace / "a.jsonl").write_text(
            '{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
        with GatewayServer(point_gateway_at(cfg, {"data": server.port})) as gw:
            r = httpx.post(f"{gw.url}/api/data/validate", params={"file_path": "a.jsonl"}, timeout=20)
        assert r.status_code == 200 and r.json()["data"]["valid_samples"] == 1


def test_launcher_gateway_and_health_probe_speak_tls(tmp_path, tiny_model_dir):
    """`make run`'s launcher with tls.* set: services serve TLS, the gateway serves HTTPS and
    the launcher waits for it over HTTPS; the container health probe checks over TLS."""
    cert, key = _self_signed(tmp_path)
    data_port, api_port = free_port(), free_port()
    overrides = {"services.data.port": data_port, "services.data.metrics_port": None, "api.port": api_port,
                 "storage.workspace": str(tmp_path / "ws"), "model.base_model_path": str(tiny_model_dir),
                 "server.grace_seconds": 2, "tls.cert_file": str(cert), "tls.key_file": str(key)}
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.jsonl").write_text(
        '{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    env = service_env(overrides)
    proc = subprocess.Popen([sys.executable, "-m", "services.common.launcher", "--services", "data",
                             "--log-dir", str(tmp_path / "logs"), "--timeout", "120"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = wait_for_line(proc, "Win-Train is up", 150)
        assert any("Win-Train is up" in line for line in lines), "".join(lines) + tail_logs(tmp_path / "logs")
        assert any(f"https://127.0.0.1:{api_port}" in line for line in lines), "".join(lines)
        url = f"https://127.0.0.1:{api_port}"
        trust = ssl.create_default_context(cafile=str(cert))
        health = httpx.get(f"{url}/health", verify=trust, timeout=20)
        assert health.json()["services"]["data"] == "SERVING"
        r = httpx.post(f"{url}/api/data/validate", params={"file_path": "a.jsonl"}, verify=trust, timeout=20)
        assert r.status_code == 200 and r.json()["data"]["valid_samples"] == 1
        with pytest.raises(httpx.HTTPError):  # no plaintext HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5)
        with pytest.raises(httpx.HTTPError):  # an unknown certificate is refused
            httpx.get(f"{url}/health", timeout=5)

        probe = [sys.executable, "-m", "services.common.healthcheck", f"127.0.0.1:{data_port}"]
        ok = subprocess.run(probe, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
        plain_env = {k: v for k, v in env.items() if not k.startswith("WINTRAIN__TLS__")}
        refused = subprocess.run(probe, cwd=REPO_ROOT, env=plain_env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Win-Train stopped." in out


def test_half_configured_tls_is_refused_naming_both_keys(tmp_path):
    from services.common.auth import tls_server_files
    from services.common.config import ConfigError

    cfg = make_config(tmp_path / "ws", tmp_path / "no-model", **{"tls.cert_file": str(tmp_path / "cert.pem")})
    with pytest.raises(ConfigError, match="tls.cert_file and tls.key_file"):
        tls_server_files(cfg)

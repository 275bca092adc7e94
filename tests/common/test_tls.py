"""Optional TLS: with tls.cert_file/key_file a service serves TLS only, and our own clients
(gateway, launcher, CLI) connect with the configured root."""

from __future__ import annotations

import datetime
import ipaddress

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
from tests.support import InProcessServer, make_config
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

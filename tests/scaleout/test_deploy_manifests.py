"""The scale-out deployment files (issue 20): the Kubernetes manifests under deploy/kubernetes
validated offline against the Kubernetes JSON schemas bundled in kubernetes-validate (strict:
an unknown field is an error), and checked against config.yaml and the code (ports, commands,
probes, headless Services, the shared PVC); docker-compose.yml's replicas and postgres profile.
The compose file's schema check is tests/deploy/test_compose.py."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from services.common.config import REPO_ROOT, SERVICE_NAMES, load_config

K8S = REPO_ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# The oldest Kubernetes the manifests target: gRPC probes are GA since 1.27.
K8S_VERSION = "1.27"


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _all() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for p in MANIFESTS for d in _docs(p)}


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_schemas(path, version):
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest():
    deployment = copy.deepcopy(_all()[("Deployment", "inference")])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc-port"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(_all()[("Deployment", "inference")])
    deployment["spec"]["replica"] = 2  # a typo: strict schemas refuse unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def _env(container) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_one_deployment_and_headless_service_per_service_with_grpc_probes():
    cfg = load_config(REPO_ROOT / "config.yaml", env={})
    docs = _all()
    for name in SERVICE_NAMES:
        port = cfg.get(f"services.{name}.port")
        deployment, service = docs[("Deployment", name)], docs[("Service", name)]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert (REPO_ROOT / "services" / name / "__main__.py").is_file()
        env = _env(container)
        assert env[f"WINTRAIN__SERVICES__{name.upper()}__PORT"] == str(port)
        assert env[f"WINTRAIN__SERVICES__{name.upper()}__HOST"] == "0.0.0.0"
        assert env["WINTRAIN_API_KEYS"] == {"secretKeyRef": {"name": "wintrain", "key": "api-keys"}}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"] == {"port": port}, (name, probe)
        assert {"name": "workspace", "mountPath": "/workspace"} in container["volumeMounts"]
        assert pod["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "wintrain-workspace"}}]
        assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        assert deployment["spec"]["template"]["metadata"]["labels"] == service["spec"]["selector"]
        assert service["spec"]["clusterIP"] == "None", f"{name}: clients balance on their side"
        assert [(p["port"], p["appProtocol"]) for p in service["spec"]["ports"]] == [(port, "grpc")]
    assert docs[("Deployment", "inference")]["spec"]["replicas"] >= 2
    train_env = _env(docs[("Deployment", "train")]["spec"]["template"]["spec"]["containers"][0])
    assert train_env["WINTRAIN__STORAGE__JOB_STORE"] == {"secretKeyRef": {"name": "wintrain", "key": "job-store"}}


def test_gateway_dials_every_backend_through_dns_and_the_config_accepts_it():
    cfg = load_config(REPO_ROOT / "config.yaml", env={})
    docs = _all()
    container = docs[("Deployment", "gateway")]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "gateway"]
    env = _env(container)
    overrides = {}
    for name in SERVICE_NAMES:
        value = env[f"WINTRAIN__SERVICES__{name.upper()}__ADDRESSES"]
        assert value == f"dns:///{name}:{cfg.get(f'services.{name}.port')}"
        overrides[f"services.{name}.addresses"] = value
    gateway_cfg = cfg.with_overrides(overrides)  # the gateway's config takes these targets
    assert [gateway_cfg.service_target(n) for n in SERVICE_NAMES] == [overrides[f"services.{n}.addresses"]
                                                                      for n in SERVICE_NAMES]
    assert docs[("Service", "gateway")]["spec"].get("clusterIP") != "None"
    pvc = docs[("PersistentVolumeClaim", "wintrain-workspace")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every replica on every node mounts it"


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kust["resources"]) == sorted(p.name for p in MANIFESTS)


def test_compose_has_replicas_and_an_optional_postgres_profile():
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert services["inference"]["deploy"]["replicas"] >= 2
    assert services["train"]["deploy"]["replicas"] == 1, "several train replicas need the PostgreSQL store"
    assert services["train"]["environment"]["WINTRAIN__STORAGE__JOB_STORE"] == "${WINTRAIN_JOB_STORE:-sqlite}"
    postgres = services["postgres"]
    assert postgres["profiles"] == ["postgres"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "ports" not in postgres and "pgdata" in compose["volumes"]
    for name, svc in services.items():  # a replicated service cannot have a fixed name or host port
        if svc.get("deploy", {}).get("replicas", 1) > 1:
            assert "container_name" not in svc and "ports" not in svc, name
    # The gateway reaches the replicas by the compose service name (Docker's DNS: every replica).
    assert services["gateway"]["environment"]["WINTRAIN__SERVICES__INFERENCE__HOST"] == "inference"

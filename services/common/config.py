"""Configuration: `config.yaml` at the repository root, overridden by environment variables.

`WINTRAIN__SECTION__KEY=value` overrides `section.key` (value parsed as a YAML scalar);
`WINTRAIN_CONFIG` names another file. Relative paths in the file are relative to the file's
folder. Start-up fails fast: `ConfigError` names the bad key and value.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = REPO_ROOT / "config.yaml"
ENV_PREFIX = "WINTRAIN__"
SERVICE_NAMES = ("data", "train", "inference", "eval", "export")


class ConfigError(ValueError):
    """A missing or invalid setting; the message names the key and the value."""


def _parse_env_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _set_dotted(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


# Expected type of each leaf that is checked. Keys absent here are free-form.
_INT_KEYS = {
    "api.port", "dataset.max_length", "dataset.max_row_bytes", "dataset.max_errors",
    "inference.max_new_tokens_cap", "inference.max_batch_prompts", "inference.batch_size",
    "inference.cache_max_models", "inference.cache_max_bytes", "inference.max_concurrent",
    "inference.max_queue", "inference.max_n", "train.max_concurrent", "eval.max_length", "api.max_body_bytes",
    "server.max_message_bytes",
} | {f"services.{name}.port" for name in SERVICE_NAMES}
_POSITIVE_NUMBER_KEYS = {
    "api.default_deadline_seconds", "server.grace_seconds", "train.cancel_grace_seconds",
    "export.parity_tolerance",
}
# Positive whole numbers or null (thread counts: null keeps the library's own default).
_THREAD_KEYS = {"model.torch_threads", "train.worker_threads"}
_BOOL_KEYS = {"inference.auto_load", "model.safetensors_only", "model.trust_remote_code"}
_CHOICES = {
    "model.device": {"auto", "cpu", "cuda"},
    "logging.level": {"DEBUG", "INFO", "WARNING", "ERROR"},
}
_PORT_KEYS = {"api.port"} | {f"services.{name}.port" for name in SERVICE_NAMES}
# Host names or addresses: strings. An unquoted IPv6 address in YAML (`::`, `::1`) is not one
# (`::` parses as a mapping), so it is refused naming the key rather than crashing later.
_HOST_KEYS = {"api.host"} | {f"services.{name}.{leaf}" for name in SERVICE_NAMES for leaf in ("host", "metrics_host")}


# gRPC target URIs (https://github.com/grpc/grpc/blob/master/doc/naming.md) taken as they are.
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def _host_port(key: str, entry: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not sep or not host or (":" in host and not bracketed) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"config: {key}: {entry!r} is not host:port (an IPv6 address goes in brackets: "
                          "'[::1]:50053')")
    return (host[1:-1] if bracketed else host), int(port)


def client_target(key: str, value: Any) -> str:
    """The gRPC target of `services.<name>.addresses` (`key`): a list of `host:port` strings or
    one comma-separated string of them, or one gRPC target URI (`dns:///inference:50053`,
    `ipv4:10.0.0.1:50053,10.0.0.2:50053`). One entry is dialed as it is (a host name resolving to
    several addresses gives several replicas); several must be IP addresses of one family and
    become an `ipv4:`/`ipv6:` target. Raises ConfigError naming `key`."""
    import ipaddress

    if isinstance(value, str):
        text = value.strip()
        if text.lower().startswith(_TARGET_SCHEMES):
            return text
        entries = [entry.strip() for entry in text.split(",")]
    elif isinstance(value, list) and value and all(isinstance(entry, str) for entry in value):
        entries = [entry.strip() for entry in value]
    else:
        raise ConfigError(f"config: {key} must be a list of host:port addresses or one comma-separated "
                          f"string of them, got {value!r}")
    if any(not entry for entry in entries):
        raise ConfigError(f"config: {key} has an empty address in {value!r}")
    if len(entries) == 1:
        if not entries[0].lower().startswith(_TARGET_SCHEMES):
            _host_port(key, entries[0])
        return entries[0]
    versions = set()
    for entry in entries:
        if entry.lower().startswith(_TARGET_SCHEMES):
            raise ConfigError(f"config: {key}: the gRPC target {entry!r} must be the only entry")
        host, _ = _host_port(key, entry)
        try:
            versions.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ConfigError(f"config: {key}: several addresses must be IP addresses, and {entry!r} names a "
                              "host; give one DNS name that resolves to every replica instead "
                              "(e.g. 'dns:///inference:50053')") from None
    if len(versions) > 1:
        raise ConfigError(f"config: {key} mixes IPv4 and IPv6 addresses; use one family (or one DNS name)")
    return ("ipv4:" if versions == {4} else "ipv6:") + ",".join(entries)


class Config:
    """Validated settings. `get("a.b.c")` reads any key; properties name the common ones."""

    def __init__(self, data: Mapping[str, Any], base_dir: Path):
        self._data = copy.deepcopy(dict(data))
        self.base_dir = base_dir
        self._validate()

    # -- access -------------------------------------------------------------
    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self._data
        for key in dotted.split("."):
            if not isinstance(node, Mapping) or key not in node:
                return default
            node = node[key]
        return node

    def require(self, dotted: str) -> Any:
        value = self.get(dotted)
        if value is None:
            raise ConfigError(f"config: {dotted} is required but not set")
        return value

    def as_dict(self) -> dict:
        return copy.deepcopy(self._data)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """A copy with dotted keys replaced (tests use it to bind port 0, set a workspace…)."""
        data = self.as_dict()
        for dotted, value in overrides.items():
            _set_dotted(data, dotted.split("."), value)
        return Config(data, self.base_dir)

    def path(self, dotted: str) -> Path:
        """A configured path, absolute (relative ones are relative to the config file)."""
        value = self.require(dotted)
        p = Path(os.path.expanduser(str(value)))
        return (p if p.is_absolute() else self.base_dir / p).resolve()

    @property
    def workspace(self) -> Path:
        return self.path("storage.workspace")

    @property
    def allowed_roots(self) -> list[Path]:
        roots = self.get("storage.allowed_roots") or []
        out = []
        for root in roots:
            p = Path(os.path.expanduser(str(root)))
            out.append((p if p.is_absolute() else self.workspace / p).resolve())
        return out or [self.workspace]

    @property
    def base_model_path(self) -> Path:
        return self.path("model.base_model_path")

    def service_address(self, name: str) -> str:
        """Where service `name` listens (`services.<name>.host:port`)."""
        return f"{self.get(f'services.{name}.host')}:{self.get(f'services.{name}.port')}"

    def service_target(self, name: str) -> str:
        """The gRPC target a client (gateway, CLI) dials for service `name`:
        `services.<name>.addresses` when set (several replicas), else `host:port`."""
        value = self.get(f"services.{name}.addresses")
        if value in (None, "", []):
            return self.service_address(name)
        return client_target(f"services.{name}.addresses", value)

    # -- validation ---------------------------------------------------------
    def _validate(self) -> None:
        for name in SERVICE_NAMES:
            for leaf in ("host", "port"):
                if self.get(f"services.{name}.{leaf}") is None:
                    raise ConfigError(f"config: services.{name}.{leaf} is required but not set")
        for key in sorted(_HOST_KEYS):
            value = self.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"config: {key} must be a host name or address as a string "
                                  f"(quote an IPv6 address: '::'), got {value!r}")
        for key in sorted(_INT_KEYS):
            value = self.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"config: {key} must be a non-negative integer, got {value!r}")
        for key in sorted(_PORT_KEYS):
            value = self.get(key)
            if value is not None and value > 65535:
                raise ConfigError(f"config: {key} must be a port number (0-65535), got {value!r}")
        for key in sorted(_POSITIVE_NUMBER_KEYS):
            value = self.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"config: {key} must be a number > 0, got {value!r}")
        for key in sorted(_THREAD_KEYS):
            value = self.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"config: {key} must be a whole number >= 1 or null, got {value!r}")
        for key in sorted(_BOOL_KEYS):
            value = self.get(key)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"config: {key} must be true or false, got {value!r}")
        for key, choices in _CHOICES.items():
            value = self.get(key)
            if value is not None and value not in choices:
                raise ConfigError(f"config: {key} must be one of {sorted(choices)}, got {value!r}")
        for name in SERVICE_NAMES:
            self.service_target(name)  # a bad services.<name>.addresses fails here, named
        nnodes = self.get("train.nnodes")
        if nnodes is not None and (isinstance(nnodes, bool) or not isinstance(nnodes, int) or nnodes < 1):
            raise ConfigError(f"config: train.nnodes must be a whole number >= 1, got {nnodes!r}")
        if nnodes is not None and nnodes > 1:
            endpoint = self.get("train.rdzv_endpoint")
            if not endpoint or not isinstance(endpoint, str):
                raise ConfigError(f"config: train.nnodes={nnodes} needs train.rdzv_endpoint (host:port of the c10d "
                                  f"rendezvous every node reaches), got {endpoint!r}")
            _host_port("train.rdzv_endpoint", endpoint.strip())
        roots = self.get("storage.allowed_roots")
        if roots is not None and not isinstance(roots, list):
            raise ConfigError(f"config: storage.allowed_roots must be a list of paths, got {roots!r}")
        if not self.get("storage.workspace"):
            raise ConfigError("config: storage.workspace is required but not set")
        if not self.get("model.base_model_path"):
            raise ConfigError("config: model.base_model_path is required but not set")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file and apply `WINTRAIN__…` overrides. Raises ConfigError."""
    env = os.environ if env is None else env
    path = Path(path or env.get("WINTRAIN_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    for name, raw in env.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
            if keys:
                _set_dotted(data, keys, _parse_env_value(raw))
    return Config(data, path.resolve().parent)

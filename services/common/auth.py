"""API keys for the gateway and every gRPC service, and the refusal to listen publicly
without them.

Keys come from `auth.api_keys` (config or WINTRAIN__AUTH__API_KEYS), the environment variable
WINTRAIN_API_KEYS (comma-separated) and `auth.api_keys_file` (one key per line). When any key
is set, HTTP needs `Authorization: Bearer <key>` and gRPC the same value in `authorization`
metadata. Health checks stay open.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from services.common.config import Config, ConfigError
from services.common.errors import Unauthenticated
from services.common.metadata import AUTHORIZATION_KEY


def load_api_keys(config: Config, env: dict | None = None) -> list[str]:
    env = os.environ if env is None else env
    keys: list[str] = []
    configured = config.get("auth.api_keys") or []
    if isinstance(configured, str):
        configured = configured.split(",")
    keys.extend(str(k) for k in configured)
    keys.extend(env.get("WINTRAIN_API_KEYS", "").split(","))
    key_file = config.get("auth.api_keys_file")
    if key_file:
        path = Path(key_file)
        path = path if path.is_absolute() else config.base_dir / path
        try:
            keys.extend(path.read_text(encoding="utf-8").splitlines())
        except OSError as exc:
            raise ConfigError(f"config: auth.api_keys_file {key_file!r} cannot be read: {exc.strerror}") from exc
    return [k.strip() for k in keys if k and k.strip()]


def key_matches(presented: str, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


def check_bearer(header_value: str, keys: list[str]) -> None:
    """Raise Unauthenticated unless `header_value` is `Bearer <one of keys>`."""
    if not keys:
        return
    scheme, _, token = (header_value or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    if not key_matches(token.strip(), keys):
        raise Unauthenticated("invalid API key")


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, setting: str, config: Config, keys: list[str]) -> None:
    """Refuse a non-loopback bind with no API keys unless `auth.allow_insecure_public`."""
    if is_loopback(host) or keys or config.get("auth.allow_insecure_public", False):
        return
    raise ConfigError(
        f"config: {setting}={host!r} is not a loopback address and no API keys are configured. "
        "Set auth.api_keys (or WINTRAIN_API_KEYS, or auth.api_keys_file) to require keys, "
        "or set auth.allow_insecure_public=true (WINTRAIN__AUTH__ALLOW_INSECURE_PUBLIC=true) to "
        "listen without authentication."
    )


def grpc_auth_guard(keys: list[str]):
    """A server CallGuard that checks `authorization` metadata."""

    def guard(method: str, context) -> None:
        if not keys:
            return
        value = ""
        for item in context.invocation_metadata() or ():
            if item.key == AUTHORIZATION_KEY:
                value = item.value if isinstance(item.value, str) else item.value.decode()
        check_bearer(value, keys)

    return guard


def client_metadata(config: Config) -> tuple[tuple[str, str], ...]:
    """Metadata a client inside the deployment (CLI, launcher) sends: the first key, or
    WINTRAIN_API_KEY."""
    key = os.environ.get("WINTRAIN_API_KEY") or next(iter(load_api_keys(config)), "")
    return ((AUTHORIZATION_KEY, f"Bearer {key}"),) if key else ()


def _config_path(config: Config, key: str) -> Path | None:
    value = config.get(key)
    if not value:
        return None
    path = Path(str(value))
    return path if path.is_absolute() else config.base_dir / path


def tls_server_files(config: Config) -> tuple[Path, Path] | None:
    """(certificate, private key) a server (gRPC service or gateway) serves TLS with, paths
    relative to the config file's folder; None for plaintext. One without the other is a
    ConfigError."""
    cert, key = _config_path(config, "tls.cert_file"), _config_path(config, "tls.key_file")
    if (cert is None) != (key is None):
        raise ConfigError("config: tls.cert_file and tls.key_file must be set together (or neither)")
    return (cert, key) if cert is not None else None


def tls_root_file(config: Config) -> Path | None:
    """The certificate our own clients trust: `tls.ca_file`, else the server's own
    `tls.cert_file` (self-signed deployments); None when TLS is off."""
    ca = _config_path(config, "tls.ca_file")
    if ca is not None:
        return ca
    files = tls_server_files(config)
    return files[0] if files else None


def https_verify(config: Config):
    """What an httpx client of our gateway passes as `verify`: an SSL context trusting
    `tls_root_file`, or True (the system's roots) when TLS is off."""
    import ssl

    root = tls_root_file(config)
    return ssl.create_default_context(cafile=str(root)) if root is not None else True


def gateway_url(config: Config) -> str:
    """Where the gateway listens: https when TLS is configured."""
    scheme = "https" if tls_server_files(config) else "http"
    return f"{scheme}://{config.get('api.host', '127.0.0.1')}:{config.get('api.port', 8801)}"


def channel_credentials(config: Config):
    """gRPC client credentials when the services serve TLS (see `tls_root_file`), None for
    plaintext."""
    import grpc

    root = tls_root_file(config)
    if root is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root.read_bytes())


def open_channel(config: Config, address: str, *, aio: bool = False, options=None):
    """A channel to one of our services: TLS when configured, plaintext otherwise."""
    import grpc

    credentials = channel_credentials(config)
    module = grpc.aio if aio else grpc
    if credentials is None:
        return module.insecure_channel(address, options=options)
    return module.secure_channel(address, credentials, options=options)

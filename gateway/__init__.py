"""Win-Train HTTP/JSON gateway: the original HTTP API, transcoded generically onto the gRPC
services from their `google.api.http` annotations. `create_app(config)` builds the ASGI app;
`python -m gateway` serves it on `api.host`:`api.port`."""

from __future__ import annotations


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("wintrain")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
        except (OSError, KeyError, ValueError):
            return "0.0.0"


__version__ = _version()


def create_app(*args, **kwargs):
    """See `gateway.app.create_app`."""
    from gateway.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["__version__", "create_app"]

"""Win-Train services. The generated gRPC stubs (package `wintrain`) live beside their
sources in protos/; importing `services` makes them importable for every entry point."""

import sys as _sys
from pathlib import Path as _Path

_PROTOS = str(_Path(__file__).resolve().parent.parent / "protos")
if _PROTOS not in _sys.path:
    _sys.path.append(_PROTOS)

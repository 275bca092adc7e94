"""Path policy: every path a client sends goes through `resolve_allowed_path` before use."""

from __future__ import annotations

import os
from pathlib import Path

from services.common.config import Config
from services.common.errors import InvalidArgument, NotFound, PermissionDenied


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_allowed_path(
    raw: str,
    config: Config,
    *,
    field: str,
    must_exist: bool = False,
    expect: str | None = None,
) -> Path:
    """Resolve a client path (relative to the workspace), following `..` and symlinks, and
    check it against `storage.allowed_roots`.

    `expect` is "file" or "dir" to require that kind when the path exists.
    Raises InvalidArgument (empty path, wrong kind), PermissionDenied (outside the roots),
    NotFound (missing while `must_exist`).
    """
    if raw is None or not str(raw).strip():
        raise InvalidArgument.for_field(field, "must not be empty")
    if "\x00" in str(raw):
        raise InvalidArgument.for_field(field, "must not contain NUL bytes")
    candidate = Path(os.path.expanduser(str(raw).strip()))
    if not candidate.is_absolute():
        candidate = config.workspace / candidate
    # resolve() follows every symlink on the way, so a link pointing out is caught here.
    resolved = candidate.resolve(strict=False)
    roots = config.allowed_roots
    if not any(_is_within(resolved, root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PermissionDenied(f"{field}: path {raw!r} is outside the allowed roots ({allowed})",
                               [(field, f"outside the allowed roots ({allowed})")])
    if must_exist and not resolved.exists():
        raise NotFound(f"{field}: {raw!r} does not exist", [(field, "does not exist")])
    if resolved.exists() and expect == "file" and not resolved.is_file():
        raise InvalidArgument.for_field(field, f"{raw!r} is a directory, expected a file")
    if resolved.exists() and expect == "dir" and not resolved.is_dir():
        raise InvalidArgument.for_field(field, f"{raw!r} is a file, expected a directory")
    return resolved


def display_path(path: Path, config: Config) -> str:
    """A path as clients should see it: relative to the workspace when inside it."""
    try:
        return str(path.relative_to(config.workspace))
    except ValueError:
        return str(path)

"""Path policy: every path a client sends goes through `resolve_allowed_path` before use."""

from __future__ import annotations

import os
from pathlib import Path

from services.common.config import Config
from services.common.errors import InvalidArgument, NotFound, PermissionDenied


# Linux's limits (NAME_MAX, PATH_MAX): longer names fail in the kernel, so they are refused
# up front as bad input rather than surfacing as an OSError later.
_NAME_MAX_BYTES = 255
_PATH_MAX_BYTES = 4096


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _shown(raw: str, limit: int = 120) -> str:
    """The client's path for an error message, cut when very long."""
    text = str(raw)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _check_lengths(path: Path, field: str) -> None:
    if len(os.fsencode(str(path))) > _PATH_MAX_BYTES:
        raise InvalidArgument.for_field(field, f"path is too long (over {_PATH_MAX_BYTES} bytes)")
    for part in path.parts:
        if len(os.fsencode(part)) > _NAME_MAX_BYTES:
            raise InvalidArgument.for_field(
                field, f"a path component is too long ({len(os.fsencode(part))} bytes; at most {_NAME_MAX_BYTES})")


def _not_found_hint(raw: str, config: Config) -> str:
    """For a relative path: the folder it was resolved against and, when the same text names
    an existing path from the config file's folder (config.yaml's own paths are relative to
    it, e.g. `var/models/tiny-chat`), the workspace-relative form that finds it."""
    text = os.path.expanduser(str(raw).strip())
    if os.path.isabs(text):
        return ""
    hint = f" (relative paths are resolved against the workspace {config.workspace})"
    try:
        from_config = (config.base_dir / text).resolve()
        if from_config.exists() and _is_within(from_config, config.workspace) and from_config != config.workspace:
            hint += f"; did you mean {str(from_config.relative_to(config.workspace))!r}?"
    except (OSError, RuntimeError, ValueError, TypeError):
        pass
    return hint


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
    Raises InvalidArgument (empty path, names too long for the filesystem, wrong kind),
    PermissionDenied (outside the roots), NotFound (missing while `must_exist`).
    """
    if raw is None or not str(raw).strip():
        raise InvalidArgument.for_field(field, "must not be empty")
    if "\x00" in str(raw):
        raise InvalidArgument.for_field(field, "must not contain NUL bytes")
    candidate = Path(os.path.expanduser(str(raw).strip()))
    if not candidate.is_absolute():
        candidate = config.workspace / candidate
    _check_lengths(candidate, field)
    try:
        # resolve() follows every symlink on the way, so a link pointing out is caught here.
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable folder on the way
        raise InvalidArgument.for_field(field, f"path {_shown(raw)} cannot be resolved: {exc}") from exc
    roots = config.allowed_roots
    if not any(_is_within(resolved, root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PermissionDenied(f"{field}: path {_shown(raw)} is outside the allowed roots ({allowed})",
                               [(field, f"outside the allowed roots ({allowed})")])
    _check_lengths(resolved, field)  # a symlink may point at a longer path
    try:
        exists = resolved.exists()
        is_file, is_dir = (resolved.is_file(), resolved.is_dir()) if exists else (False, False)
    except OSError as exc:
        raise InvalidArgument.for_field(field, f"path {_shown(raw)} cannot be used: {exc.strerror}") from exc
    if must_exist and not exists:
        raise NotFound(f"{field}: {_shown(raw)} does not exist{_not_found_hint(raw, config)}",
                       [(field, "does not exist")])
    if exists and expect == "file" and not is_file:
        raise InvalidArgument.for_field(field, f"{_shown(raw)} is a directory, expected a file")
    if exists and expect == "dir" and not is_dir:
        raise InvalidArgument.for_field(field, f"{_shown(raw)} is a file, expected a directory")
    return resolved


def check_within_roots(path: Path, config: Config, *, field: str, what: str) -> None:
    """Refuse (PermissionDenied naming `field`) a path found by the server on a client's
    behalf, e.g. read from a file the client supplied, when it resolves outside
    `storage.allowed_roots`. `what` says what the path is, for the message."""
    resolved = path.resolve(strict=False)
    roots = config.allowed_roots
    if not any(_is_within(resolved, root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PermissionDenied(f"{field}: {what} {_shown(str(path))} is outside the allowed roots ({allowed})",
                               [(field, f"{what} is outside the allowed roots ({allowed})")])


def display_path(path: Path, config: Config) -> str:
    """A path as clients should see it: relative to the workspace when inside it."""
    try:
        return str(path.relative_to(config.workspace))
    except ValueError:
        return str(path)


def client_form(path: Path, raw: str, config: Config) -> str:
    """A server path echoed in the form the client sent `raw` in: absolute when `raw` was
    absolute (scripts do `os.path.getsize(result["export_path"])`), else as `display_path`."""
    if Path(os.path.expanduser(str(raw).strip())).is_absolute():
        return str(path)
    return display_path(path, config)

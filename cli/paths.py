"""Paths typed on the command line.

The services resolve every relative path against the workspace (`storage.workspace`, `./var`
by default), so `datasets/train_sample.jsonl` names `var/datasets/train_sample.jsonl`. A shell
user also expects a path to mean what it means from the current folder, e.g. the one tab
completion produced: `var/datasets/train_sample.jsonl`. One rule serves both:

    a relative path that names an existing file or folder from the current folder, and lies
    inside the workspace, is sent workspace-relative (`var/datasets/x.jsonl` → `datasets/x.jsonl`);
    any other path is sent exactly as typed (the service resolves it against the workspace).

Only inputs (datasets, models, adapters) go through this rule; output folders are sent as typed,
so `--out models/qa` always means `var/models/qa`.
"""

from __future__ import annotations

import os
from pathlib import Path

from services.common.config import Config


def to_workspace(raw: str | None, config: Config, cwd: Path | None = None) -> str | None:
    """`raw` as the services should see it (see the module's rule). None and "" pass through."""
    if not raw or os.path.isabs(os.path.expanduser(raw)):
        return raw
    here = Path(cwd) if cwd is not None else Path.cwd()
    local = here / raw
    try:
        if not local.exists():
            return raw
        resolved = local.resolve()
        workspace = config.workspace
    except (OSError, RuntimeError):
        return raw
    if resolved == workspace or workspace not in resolved.parents:
        return raw
    # The same place seen from the workspace: nothing to change (e.g. typed from inside it).
    try:
        if (workspace / raw).resolve() == resolved:
            return raw
    except (OSError, RuntimeError):
        pass
    return resolved.relative_to(workspace).as_posix()

"""Child processes that do not outlive their parent.

`die_with_parent` asks Linux to send this process a signal when its parent dies
(prctl PR_SET_PDEATHSIG). Use it as `subprocess.Popen(..., preexec_fn=die_with_parent)` for a
child started from here, or call it first thing in a worker's `main`. Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> None:
    """Receive `sig` when the parent process dies.

    `parent_pid`: the pid the parent had; if this process has already been re-parented (the
    parent died before the call), `sig` is raised at once instead of never.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)

"""die_with_parent: a child started with it does not outlive a parent killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from services.common.config import REPO_ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")

PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from services.common.proc import die_with_parent
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             preexec_fn=die_with_parent)
    print(child.pid, flush=True)
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (dead, not yet reaped by init) counts as gone
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_child_dies_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid), "the child outlived its parent"


def test_a_parent_already_gone_signals_at_once():
    # parent_pid names a pid that is not our parent: the signal comes at the call, not never.
    code = ("import os, signal; from services.common.proc import die_with_parent; "
            "die_with_parent(signal.SIGTERM, parent_pid=os.getppid() + 10**6); import time; time.sleep(30)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, timeout=20)
    assert done.returncode == -signal.SIGTERM

"""Every training child dies with the server (issue 15 item 3): the single worker asks for it
itself; torchrun (num_processes > 1) is started through a guard that asks before exec."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from services.train.scheduler import with_parent_guard
from tests.support import PYTHON


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_guarded_child_gets_sigterm_when_its_parent_dies(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from services.train.scheduler import with_parent_guard
        cmd = with_parent_guard(["-c", "import time; time.sleep(120)"], os.getpid())
        child = subprocess.Popen(cmd)
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """)
    parent = subprocess.Popen([PYTHON, "-c", parent_code], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the guarded child did not start"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        time.sleep(1.0)  # the guard has exec'ed by now
        assert _alive(child)
        parent.kill()  # kill -9 of the "server"
        parent.wait(10)
        deadline = time.monotonic() + 15
        while _alive(child):
            assert time.monotonic() < deadline, "the guarded child outlived its parent"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_torchrun_command_is_guarded(tiny_model_dir, tmp_path):
    from services.train.scheduler import Scheduler
    from services.train.store import TrainJobStore
    from tests.support import make_config

    config = make_config(tmp_path / "ws", tiny_model_dir)
    scheduler = Scheduler(TrainJobStore(config.workspace / "jobs.db"), config)
    cmd = scheduler.worker_command("t", 1, 2, tmp_path / "c.json")
    assert cmd[:4] == with_parent_guard([], os.getpid())[:4] and "torch.distributed.run" in cmd
    assert scheduler.worker_command("t", 1, 1, tmp_path / "c.json")[:3] == [sys.executable, "-m",
                                                                            "services.train.worker"]

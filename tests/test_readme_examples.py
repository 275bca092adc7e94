"""Every shell example of the README (the `curl` and `wintrain` lines of its indented code
blocks), run in order, as written, against a real system: the five services and the gateway on
free ports, a workspace `var/` in a temporary folder that is also the current folder. Only the
ports are translated (`localhost:8801` -> the test gateway; `wintrain` gets the service ports
from WINTRAIN__… variables) and `<task_id>` becomes the task the README's train/start started.
Each command must exit 0 and each HTTP answer must be 2xx, so the README cannot drift."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.config import REPO_ROOT
from tests.support import all_services, make_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]

DATASETS = REPO_ROOT / "services" / "common" / "assets" / "datasets"
WINTRAIN = Path(sys.executable).parent / "wintrain"


def _complete(command: str) -> bool:
    try:
        shlex.split(command)
    except ValueError:  # an open quote: the JSON goes on on the next line
        return False
    return not command.endswith("\\")


def readme_commands(text: str) -> list[list[str]]:
    """The curl/wintrain commands of the README's indented code blocks as argv lists:
    continuation lines (a trailing backslash, or a quote still open) joined, `# comments`
    dropped."""
    commands: list[list[str]] = []
    pending = ""
    for line in text.splitlines():
        body = line.strip()
        if pending:
            pending = pending.removesuffix("\\").rstrip() + " " + body
        elif line.startswith("    ") and re.match(r"(curl|wintrain)\s", body):
            pending = body
        else:
            continue
        if _complete(pending):
            commands.append(shlex.split(pending, comments=True))
            pending = ""
    return commands


def _wait_for_a_step(url: str, task_id: str, timeout: float = 300) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/api/train/status/{task_id}", timeout=30).json()
        task = body.get("data", body)
        if task["current_step"] >= 1:
            return
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} made no step in {timeout}s")


def _wait_for_status(url: str, task_id: str, status: str, timeout: float = 120) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/api/train/status/{task_id}", timeout=30).json()
        if body.get("data", body)["status"] == status:
            return
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} is not {status} after {timeout}s")


def test_readme_commands_are_found():
    commands = readme_commands((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert sum(c[0] == "curl" for c in commands) >= 15
    assert sum(c[0] == "wintrain" for c in commands) >= 4
    assert any("<task_id>" in " ".join(c) for c in commands)
    assert not any(word in ("\\", "#") or word.startswith("#") for c in commands for word in c)
    assert all(json.loads(c[c.index("-d") + 1]) is not None for c in commands if "-d" in c)


def test_every_readme_shell_example_runs(tmp_path, tiny_model_dir):
    from tests.ui.test_dashboard import _Gateway

    ws = tmp_path / "var"
    shutil.copytree(tiny_model_dir, ws / "models" / "tiny-chat")
    shutil.copytree(DATASETS, ws / "datasets")
    config = make_config(ws, ws / "models" / "tiny-chat")
    commands = readme_commands((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    with all_services(config) as servers:
        ports = {f"services.{name}.port": s.port for name, s in servers.items()}
        with _Gateway(config.with_overrides(ports)) as url:
            env = dict(os.environ, COLUMNS="160", PYTHONUNBUFFERED="1",
                       WINTRAIN__STORAGE__WORKSPACE=str(ws), WINTRAIN__API__PORT=url.rsplit(":", 1)[1],
                       PATH=f"{WINTRAIN.parent}{os.pathsep}{os.environ.get('PATH', '')}")
            env.update({f"WINTRAIN__SERVICES__{n.upper()}__PORT": str(s.port) for n, s in servers.items()})
            task_id = ""
            for written in commands:
                command = shlex.join(written)
                if "<task_id>" in command:
                    assert task_id, f"no task started before: {command}"
                argv = [w.replace("<task_id>", task_id).replace("localhost:8801", url.removeprefix("http://"))
                        for w in written]
                if "/api/train/cancel/" in command:
                    # as a person would: cancel once the run is under way (a cancelled task resumes
                    # from the checkpoint its first steps leave)
                    _wait_for_a_step(url, task_id)
                if "/api/train/resume/" in command:
                    _wait_for_status(url, task_id, "cancelled")  # cancel stops at the next step
                if argv[0] == "curl":
                    argv[1:1] = ["-sS", "-w", "\nHTTP_STATUS %{http_code}\n", "--max-time", "900"]
                proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                                      stdin=subprocess.DEVNULL, timeout=900)
                shown = f"$ {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                assert proc.returncode == 0, shown
                if argv[0] == "curl":
                    status = int(proc.stdout.rsplit("HTTP_STATUS ", 1)[1])
                    assert 200 <= status < 300, shown
                    if "/api/train/start" in command:
                        task_id = json.loads(proc.stdout.rsplit("HTTP_STATUS ", 1)[0])["task_id"]

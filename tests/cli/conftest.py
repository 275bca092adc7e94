"""The five real services in-process on free ports (one set per test module), and helpers to run
`wintrain` against them: in-process through `cli.main.main` (fast) or as the installed console
script (a real process, for exit codes and signals)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from services.common.config import REPO_ROOT, Config
from tests.support import InProcessServer, all_services, free_port, make_config

DATASETS = REPO_ROOT / "services" / "common" / "assets" / "datasets"
WINTRAIN = Path(sys.executable).parent / "wintrain"


@dataclass
class Stack:
    config: Config
    workspace: Path
    model: Path
    env: dict[str, str] = field(default_factory=dict)
    servers: dict[str, InProcessServer] = field(default_factory=dict)


@dataclass
class CliRun:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)

    def json_lines(self) -> list:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    """data, train, inference, eval and export served in this process on free ports; the tiny
    model is the workspace's base model (`models/tiny-chat`), the bundled datasets are in
    `datasets/`."""
    ws = tmp_path_factory.mktemp("cli") / "ws"
    ws.mkdir()
    model = ws / "models" / "tiny-chat"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(DATASETS, ws / "datasets")
    config = make_config(ws, model, **{"train.cancel_grace_seconds": 10})
    env = {"WINTRAIN__API__PORT": str(free_port())}  # no gateway here
    with all_services(config) as servers:
        env.update({f"WINTRAIN__SERVICES__{name.upper()}__PORT": str(s.port) for name, s in servers.items()})
        yield Stack(config, ws, model, env, servers)


@pytest.fixture
def wintrain(stack, capsys):
    """Run `wintrain ARGS…` in this process against the stack; returns CliRun."""
    from cli.main import main

    def run(*args: str) -> CliRun:
        capsys.readouterr()
        with mock.patch.dict(os.environ, stack.env):
            code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


def process_env(stack: Stack) -> dict[str, str]:
    env = dict(os.environ)
    env.update(stack.env)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("COLUMNS", "160")
    return env


def run_script(stack: Stack, *args: str, timeout: float = 300, stdin: str | None = None) -> CliRun:
    """The installed `wintrain` console script as a real process."""
    proc = subprocess.run([str(WINTRAIN), *map(str, args)], env=process_env(stack), capture_output=True, text=True,
                          timeout=timeout, input=stdin, cwd=REPO_ROOT)
    return CliRun(proc.returncode, proc.stdout, proc.stderr)

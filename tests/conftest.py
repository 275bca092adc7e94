"""Shared fixtures: the tiny model (built once per session) and a config on a temporary
workspace. See tests/support.py for in-process servers and real processes."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

import services  # noqa: F401  (generated stubs importable)
from tests.pg import postgres  # noqa: F401  (a real PostgreSQL server, for the job-store tests)
from tests.support import make_config

# Keep torch polite on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The Ctrl-C tests send SIGINT to the processes they start, as a terminal would. A suite run as
# a background job (`make test &`, nohup) inherits SIGINT ignored, and an ignored signal stays
# ignored across exec, so those children would never see it. A handled signal is reset to the
# default at exec: handle it here and the children start as they would from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The embedded tiny chat model, built once for the whole test session."""
    from tools.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny-chat"
    build_tiny_model(out)
    return out


@pytest.fixture
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def config(workspace, tiny_model_dir):
    """Config on a fresh workspace; the tiny model is the base model (server-side path)."""
    return make_config(workspace, tiny_model_dir)


@pytest.fixture
def ws_model(workspace, tiny_model_dir) -> Path:
    """A copy of the tiny model inside the workspace, for requests that name a model path."""
    dest = workspace / "models" / "tiny-chat"
    shutil.copytree(tiny_model_dir, dest)
    return dest

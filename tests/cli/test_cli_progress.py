"""`wintrain train start --follow` on a terminal, against the real services: every progress
frame fits 120 columns whole (nothing cut to `…`), no `step 0/1` before the task's total is
known, the final frame says `completed` with the last step, and Ctrl-C stops the bar before
its message (no stale progress line redrawn under it). Terminal output is read as written:
rich's frames between its cursor-control sequences."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest
from rich.console import Console

from cli.client import EXIT_CANCELLED, EXIT_OK
from cli.output import Output
from tests.cli.conftest import WINTRAIN, process_env
from tests.cli.test_cli_commands import SMALL_TRAINING

_SGR = re.compile(r"\x1b\[[0-9;?]*m")
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n")


def frames(raw: str) -> list[str]:
    """The visible lines a terminal was sent, in order (styles dropped, split at every cursor
    movement, erase, carriage return or newline)."""
    return [part.rstrip() for part in _CONTROL.split(_SGR.sub("", raw)) if part.strip()]


def test_frames_split_rich_redraws():
    raw = "\x1b[?25l\x1b[1mrunning\x1b[0m ━━ step 1/3\r\x1b[2Kcompleted ━━ step 3/3\n\x1b[?25h"
    assert frames(raw) == ["running ━━ step 1/3", "completed ━━ step 3/3"]


@pytest.mark.slow
def test_follow_at_120_columns_draws_whole_frames_and_ends_completed(stack):
    from cli.client import Clients
    from cli.main import build_parser
    from cli.train import cmd_start

    args = build_parser().parse_args(["train", "start", "--data", "datasets/bilingual_chat.jsonl",
                                      "--out", "out/progress120", *SMALL_TRAINING, "--follow"])
    out = Output(False)
    sink = io.StringIO()
    out.console = Console(file=sink, width=120, force_terminal=True, highlight=False, soft_wrap=False)
    clients = Clients(stack.config.with_overrides(
        {f"services.{name}.port": server.port for name, server in stack.servers.items()}))
    try:
        code = cmd_start(args, clients, out)
    finally:
        clients.close()
    assert code == EXIT_OK, sink.getvalue()
    shown = frames(sink.getvalue())
    bars = [f for f in shown if "━" in f]
    assert bars, shown
    for frame in shown:
        assert len(frame) <= 120, frame
        assert "…" not in frame, f"a cut progress line: {frame!r}"
        assert "step 0/1" not in frame
    final = bars[-1]
    assert final.startswith("completed") and "step 3/3" in final and "loss " in final and "ETA" in final, final
    assert re.search(r"loss \d", final), "the last known loss stays on the final line"
    assert any("task " in f and " completed" in f and "final loss" in f for f in shown[-3:]), shown[-3:]


@pytest.mark.slow
def test_ctrl_c_stops_the_bar_before_its_message(stack, wintrain):
    env = process_env(stack)
    env.update({"COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"})
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(WINTRAIN), "train", "start", "--data", "datasets/bilingual_chat.jsonl",
                             "--out", "out/ctrl-c", "--set", "max_steps=400", "--set", "logging_steps=1",
                             "--set", "max_length=64", "--set", "gradient_accumulation_steps=1", "--follow"],
                            env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    raw = b""

    def read_for(seconds: float, until: bytes | None = None) -> None:
        nonlocal raw
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    return
                if not chunk:
                    return
                raw += chunk
                if until is not None and until in raw:
                    return
            elif proc.poll() is not None:
                return

    task_id = ""
    try:
        read_for(180, until=b"step 2/")
        text = raw.decode("utf-8", "replace")
        assert "step 2/" in text, text[-2000:]
        task_id = re.search(r"task ([0-9a-f-]{8,})", text).group(1)
        proc.send_signal(signal.SIGINT)
        read_for(30)
        code = proc.wait(30)
        shown = frames(raw.decode("utf-8", "replace"))
        assert code == EXIT_CANCELLED, shown[-5:]
        notes = [i for i, f in enumerate(shown) if "stopped watching" in f]
        assert notes, shown[-5:]
        after = shown[notes[-1] + 1:]
        assert not any("━" in f or "step " in f for f in after), f"a progress line redrawn after the message: {after}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        if task_id:
            wintrain("train", "cancel", task_id)

"""What the command line prints: rich tables for people, JSON for scripts (`--json`)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from google.protobuf.message import Message
from rich.console import Console

from gateway.jsonmap import message_to_json


def to_dict(message: Message) -> dict[str, Any]:
    """A message exactly as the HTTP API writes it: the proto's field names, lowercase status
    and strategy words (`completed`, `lora`), 64-bit integers as numbers."""
    return message_to_json(message)


class Output:
    """Printing for one command. In JSON mode only machine-readable text goes to stdout."""

    def __init__(self, json_mode: bool):
        self.json = json_mode
        # Piped output (logs, CI) gets wide lines instead of rich's 80-column default.
        width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
        self.console = Console(highlight=False, soft_wrap=False, width=width)
        self.err = Console(stderr=True, highlight=False)

    def data(self, payload: Any, *, compact: bool = False) -> None:
        """Print `payload` (a message or plain data) as JSON."""
        if isinstance(payload, Message):
            payload = to_dict(payload)
        text = json.dumps(payload, ensure_ascii=False, indent=None if compact else 2, default=str)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if not self.json:
            self.console.print(*args, **kwargs)

    def note(self, text: str) -> None:
        """A side remark (stderr, also in JSON mode, never mixed into the JSON)."""
        self.err.print(text, markup=False)


def fmt_num(value: float, digits: int = 4) -> str:
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        return f"{value:.{max(1, digits - 2)}e}"
    return f"{value:.{digits}g}"


def fmt_duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

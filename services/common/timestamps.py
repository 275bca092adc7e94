"""The one timestamp format of tasks, events and checkpoints: UTC ISO-8601 with milliseconds
and a `Z`, e.g. 2025-05-01T12:00:00.123Z (what the job store writes and the API returns)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso_of(ts: float) -> str:
    """A time (seconds since the epoch) in the format."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime(FORMAT)[:-4] + "Z"


def now_iso() -> str:
    return iso_of(time.time())


def parse_iso(text: str) -> float:
    """A timestamp in the format as seconds since the epoch (ValueError when it is not one)."""
    return datetime.strptime(text, FORMAT).replace(tzinfo=timezone.utc).timestamp()

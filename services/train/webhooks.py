"""Webhooks on the end of a task (issue 19), signed with the Standard Webhooks scheme.

Config:

    train:
      webhooks:
        - url: https://example.com/hooks/train
          secret: whsec_<base64>        # or any string (its UTF-8 bytes are the key)
          events: [fine_tuning.job.succeeded, train.task.failed]   # optional; default: all
      webhook_max_attempts: 5           # tries per delivery
      webhook_retry_seconds: 1.0        # backoff: 1, 2, 4, 8... seconds between tries

Events: `fine_tuning.job.succeeded | failed | cancelled` (OpenAI's names; `data` is
`{"id": <the OpenAI job id>, "object": "fine_tuning.job", "status"}`: the job whose record in
`<workspace>/openai/jobs` names the task, else `ftjob-<task_id>`) and the native
`train.task.completed | failed | cancelled | paused | interrupted` (`data` is the
TrainingTask). The body is `{"object": "event", "id", "type", "created_at", "data"}`; the
headers `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`.

A dispatcher on the service's event loop looks for tasks that ended since the service
started, and delivers each end once per attempt of the task; a delivery that fails (no
answer, or not 2xx) is retried with backoff, in the background: it never blocks or changes
the task. Every try is an event of the task (kind `webhook`), so `GET .../events` shows it.
Ends that happen while the service is down are not delivered.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from services.common.config import Config, ConfigError
from services.train.store import TERMINAL, TaskStore

log = logging.getLogger("wintrain.train.webhooks")

OPENAI_EVENTS = {"completed": "fine_tuning.job.succeeded", "failed": "fine_tuning.job.failed",
                 "cancelled": "fine_tuning.job.cancelled"}
OPENAI_STATUS = {"completed": "succeeded", "failed": "failed", "cancelled": "cancelled"}
EVENT_KIND = "webhook"


@dataclass(frozen=True)
class Subscriber:
    url: str
    secret: bytes
    events: frozenset[str] | None  # None: every event


def native_event(status: str) -> str:
    return f"train.task.{status}"


def load_subscribers(config: Config) -> list[Subscriber]:
    raw = config.get("train.webhooks") or []
    if not isinstance(raw, list):
        raise ConfigError(f"config: train.webhooks must be a list of {{url, secret, events}}, got {raw!r}")
    known = set(OPENAI_EVENTS.values()) | {native_event(s) for s in TERMINAL}
    out = []
    for i, item in enumerate(raw):
        key = f"train.webhooks[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"config: {key} must be a mapping with url, secret and events")
        url = item.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"config: {key}.url must be an http(s) URL, got {url!r}")
        secret = item.get("secret")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"config: {key}.secret must be a non-empty string")
        events = item.get("events")
        if events is not None:
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise ConfigError(f"config: {key}.events must be a list of event names")
            unknown = sorted(set(events) - known)
            if unknown:
                raise ConfigError(f"config: {key}.events: unknown event {unknown[0]!r} (known: {', '.join(sorted(known))})")
        out.append(Subscriber(url, secret_key(secret, f"{key}.secret"),
                              frozenset(events) if events is not None else None))
    return out


def secret_key(secret: str, where: str = "secret") -> bytes:
    """Standard Webhooks: `whsec_<base64>` is base64 key material; any other string is used
    as its UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except ValueError:
            raise ConfigError(f"config: {where}: whsec_ secrets are base64") from None
    return secret.encode("utf-8")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(key: bytes, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver checks (used by the tests): one of the signatures matches."""
    expected = sign(key, headers["webhook-id"], int(headers["webhook-timestamp"]), body)
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


class WebhookDispatcher:
    """See the module docstring."""

    def __init__(self, store: TaskStore, config: Config, task_json: Callable[[Any], dict],
                 *, poll_seconds: float = 0.5):
        self.store = store
        self.subscribers = load_subscribers(config)
        self.jobs_folder = Path(config.workspace) / "openai" / "jobs"
        self.max_attempts = max(1, int(config.get("train.webhook_max_attempts", 5) or 5))
        self.retry_seconds = float(config.get("train.webhook_retry_seconds", 1.0) or 1.0)
        self.timeout = float(config.get("train.webhook_timeout_seconds", 10.0) or 10.0)
        self.task_json = task_json
        self.poll_seconds = poll_seconds
        self.started_at = ""
        self._seen: set[tuple[str, int, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        if not self.subscribers:
            return
        from services.train.store import now_iso

        self.started_at = now_iso()
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="train-webhooks")

    async def close(self) -> None:
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._scan)
            except Exception:  # noqa: BLE001 - a bad scan must not stop deliveries
                log.exception("webhook scan failed")
            await asyncio.sleep(self.poll_seconds)

    def _scan(self) -> None:
        for task in self.store.with_status(*TERMINAL):
            key = (task.task_id, task.attempt, task.status)
            if key in self._seen or not task.completed_at or task.completed_at < self.started_at:
                continue
            self._seen.add(key)
            for event_type, data in self.payloads(task):
                for sub in self.subscribers:
                    if sub.events is None or event_type in sub.events:
                        self._loop_call(self._deliver, sub, task.task_id, event_type, data)

    def _loop_call(self, fn, *args) -> None:
        loop = self._loop_task.get_loop() if self._loop_task is not None else asyncio.get_event_loop()

        def spawn():
            job = loop.create_task(fn(*args))
            self._tasks.add(job)
            job.add_done_callback(self._tasks.discard)

        loop.call_soon_threadsafe(spawn)

    def job_id(self, task_id: str) -> str:
        """The OpenAI job (gateway.openai_ft's record) that started this task."""
        for path in self.jobs_folder.glob("ftjob-*.json") if self.jobs_folder.is_dir() else ():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if record.get("task_id") == task_id and isinstance(record.get("id"), str):
                return record["id"]
        return f"ftjob-{task_id}"

    def payloads(self, task) -> list[tuple[str, dict]]:
        out = [(native_event(task.status), self.task_json(task))]
        if task.status in OPENAI_EVENTS:
            out.append((OPENAI_EVENTS[task.status], {"id": self.job_id(task.task_id), "object": "fine_tuning.job",
                                                     "status": OPENAI_STATUS[task.status]}))
        return out

    async def _deliver(self, sub: Subscriber, task_id: str, event_type: str, data: dict) -> None:
        import httpx

        msg_id = f"evt_{uuid.uuid4().hex}"
        body = json.dumps({"object": "event", "id": msg_id, "type": event_type, "created_at": int(time.time()),
                           "data": data}, ensure_ascii=False).encode()
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            for attempt in range(1, self.max_attempts + 1):
                timestamp = int(time.time())
                headers = {"content-type": "application/json", "webhook-id": msg_id,
                           "webhook-timestamp": str(timestamp), "webhook-signature": sign(sub.secret, msg_id,
                                                                                        timestamp, body)}
                try:
                    reply = await client.post(sub.url, content=body, headers=headers)
                    outcome, ok = f"HTTP {reply.status_code}", 200 <= reply.status_code < 300
                except httpx.HTTPError as exc:
                    outcome, ok = f"{type(exc).__name__}: {exc}"[:200], False
                last = ok or attempt == self.max_attempts
                verdict = "delivered" if ok else ("failed, giving up" if last else "failed, will retry")
                message = f"webhook {event_type} to {sub.url}: attempt {attempt}/{self.max_attempts} {outcome}, {verdict}"
                await asyncio.to_thread(self.store.add_event, task_id, EVENT_KIND, message,
                                        {"webhook": {"url": sub.url, "event": event_type, "id": msg_id,
                                                     "attempt": attempt, "delivered": ok}})
                if last:
                    return
                await asyncio.sleep(self.retry_seconds * 2 ** (attempt - 1))

"""Admission control for the heavy work of a service (generations, evaluations, exports): at
most `max_concurrent` run, at most `max_queue` wait, and anything beyond that is refused at once
with RESOURCE_EXHAUSTED instead of piling up.

A slot is taken on the event loop (`await limiter.acquire(...)`) and may be given back from
any thread (`ticket.release()`), so the worker thread that runs the work frees its slot the
moment it really ends, even when the client that asked for it went away long before.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor

from services.common.config import Config, ConfigError
from services.common.errors import DeadlineExceeded, ResourceExhausted


class Ticket:
    """One admitted request. `release()` is idempotent and thread-safe."""

    def __init__(self, limiter: "AdmissionLimiter"):
        self._limiter = limiter
        self._released = False
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._limiter._release_slot()


class AdmissionLimiter:
    """Bounded concurrency plus a bounded FIFO queue. `what` names the work in messages
    ("generations"); `section` the config section of its two settings ("inference")."""

    def __init__(self, max_concurrent: int, max_queue: int, *, what: str = "generations",
                 section: str = "inference"):
        if max_concurrent < 1:
            raise ValueError(f"{section}.max_concurrent must be >= 1")
        if max_queue < 0:
            raise ValueError(f"{section}.max_queue must be >= 0")
        self.what, self.section = what, section
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The worker threads of admitted work: one per slot, +1 because a finishing thread
        hands its slot on before it is back in the pool."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.max_concurrent + 1,
                                                    thread_name_prefix=f"wintrain-{self.section}")
            return self._executor

    def shutdown(self) -> None:
        """Drop queued work (its slots are released); running work ends on its own."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> int:
        """Slots held now (generations admitted and not yet finished)."""
        with self._lock:
            return self._running

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(1 for f in self._waiting if not f.done())

    async def acquire(self, timeout: float | None = None) -> Ticket:
        """A slot, now or after waiting in the queue (at most `timeout` seconds).
        Raises ResourceExhausted when the queue is full, DeadlineExceeded on timeout."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._running < self.max_concurrent and not self._waiting:
                self._running += 1
                return Ticket(self)
            if len(self._waiting) >= self.max_queue:
                raise ResourceExhausted(
                    f"server busy: {self._running} {self.what} running and {len(self._waiting)} waiting "
                    f"({self.section}.max_concurrent={self.max_concurrent}, "
                    f"{self.section}.max_queue={self.max_queue}); retry later"
                )
            fut: asyncio.Future = loop.create_future()
            self._waiting.append(fut)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, max(timeout, 0.0))
        except BaseException as exc:
            granted = False
            with self._lock:
                if fut in self._waiting:
                    self._waiting.remove(fut)
                elif fut.done() and not fut.cancelled():
                    granted = True  # the slot was handed over just as we gave up
            if granted:
                self._release_slot()
            # When the hand-over is still in flight, `_grant` sees the cancelled future and
            # passes the slot on.
            if isinstance(exc, asyncio.TimeoutError):
                raise DeadlineExceeded(f"deadline exceeded while waiting for a slot ({self.what})") from None
            raise
        return Ticket(self)

    def _release_slot(self) -> None:
        with self._lock:
            while self._waiting:
                fut = self._waiting.popleft()
                if fut.done():
                    continue
                # The slot passes straight to the next waiter; `_running` stays the same.
                try:
                    fut.get_loop().call_soon_threadsafe(self._grant, fut)
                except RuntimeError:  # its event loop is closed (shutting down)
                    continue
                return
            self._running -= 1

    def _grant(self, fut: asyncio.Future) -> None:
        if fut.done():  # cancelled while the hand-over was queued: pass it on
            self._release_slot()
        else:
            fut.set_result(None)


def limiter_from_config(config: Config, section: str, *, what: str, max_concurrent: int,
                        max_queue: int) -> AdmissionLimiter:
    """The limiter of one service from `<section>.max_concurrent` and `<section>.max_queue`
    (the given numbers when unset). Raises ConfigError naming a bad key."""
    values = {}
    for key, default, minimum in (("max_concurrent", max_concurrent, 1), ("max_queue", max_queue, 0)):
        value = config.get(f"{section}.{key}", default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"config: {section}.{key} must be an integer >= {minimum}, got {value!r}")
        values[key] = value
    return AdmissionLimiter(values["max_concurrent"], values["max_queue"], what=what, section=section)

"""Admission control for the heavy work of a service (generations, evaluations, exports): at
most `max_concurrent` slots are held, at most `max_queue` requests wait, and anything beyond
that is refused at once with RESOURCE_EXHAUSTED instead of piling up.

A request takes `weight` slots (`await limiter.acquire(weight=k)`, default 1). The inference
service weighs a request by the sequences it puts into the running batch (a Chat with n=4 takes
4), so `inference.max_concurrent` counts sequences; data, eval and export take 1 per request.
A weight above `max_concurrent` is clamped to `max_concurrent`: such a request still runs, alone,
once everything before it has finished (it is never refused for its size alone).

The queue is strictly FIFO: the request at its head waits until its k slots are free, and
nothing behind it jumps ahead, even a lighter request that would fit now (so a heavy request is
never starved by a stream of light ones). A slot is taken on the event loop and may be given
back from any thread (`ticket.release()`, which gives back exactly the ticket's weight, once),
so the worker thread that runs the work frees its slots the moment it really ends, even when
the client that asked for it went away long before.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor

from services.common.config import Config, ConfigError
from services.common.errors import DeadlineExceeded, ResourceExhausted


class Ticket:
    """One admitted request holding `weight` slots. `release()` is idempotent and thread-safe."""

    def __init__(self, limiter: "AdmissionLimiter", weight: int = 1):
        self._limiter = limiter
        self.weight = weight
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
        self._limiter._release(self.weight)


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
        # Waiters in arrival order: [future, weight].
        self._waiting: collections.deque[tuple[asyncio.Future, int]] = collections.deque()
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
        """Slots held now (the weights of the work admitted and not yet finished)."""
        with self._lock:
            return self._running

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(1 for f, _w in self._waiting if not f.done())

    def weight_of(self, weight: int) -> int:
        """The slots a request of `weight` takes: at least 1, at most `max_concurrent`."""
        return max(1, min(int(weight), self.max_concurrent))

    async def acquire(self, timeout: float | None = None, *, weight: int = 1) -> Ticket:
        """`weight` slots (clamped to 1..max_concurrent), now or after waiting in the FIFO
        queue (at most `timeout` seconds). Raises ResourceExhausted when the queue is full,
        DeadlineExceeded on timeout."""
        loop = asyncio.get_running_loop()
        weight = self.weight_of(weight)
        with self._lock:
            if self._running + weight <= self.max_concurrent and not self._waiting:
                self._running += weight
                return Ticket(self, weight)
            if len(self._waiting) >= self.max_queue:
                raise ResourceExhausted(
                    f"server busy: {self._running} of {self.max_concurrent} {self.what} running and "
                    f"{len(self._waiting)} requests waiting, this request needs {weight} "
                    f"({self.section}.max_concurrent={self.max_concurrent}, "
                    f"{self.section}.max_queue={self.max_queue}); retry later"
                )
            fut: asyncio.Future = loop.create_future()
            entry = (fut, weight)
            self._waiting.append(entry)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, max(timeout, 0.0))
        except BaseException as exc:
            granted = False
            with self._lock:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                    # A heavy head that gave up may have held back lighter waiters behind it.
                    self._hand_over()
                elif fut.done() and not fut.cancelled():
                    granted = True  # the slots were handed over just as we gave up
            if granted:
                self._release(weight)
            # When the hand-over is still in flight, `_grant` sees the cancelled future and
            # gives the slots back.
            if isinstance(exc, asyncio.TimeoutError):
                raise DeadlineExceeded(f"deadline exceeded while waiting for {weight} slot(s) ({self.what})") from None
            raise
        return Ticket(self, weight)

    def _release(self, weight: int) -> None:
        with self._lock:
            self._running -= weight
            self._hand_over()

    def _hand_over(self) -> None:
        """Admit waiters from the head while their weight fits (call with the lock held). Their
        slots are counted in `_running` from here on, before their event loop wakes them."""
        while self._waiting:
            fut, weight = self._waiting[0]
            if fut.done():  # cancelled or timed out: its place is gone
                self._waiting.popleft()
                continue
            if self._running + weight > self.max_concurrent:
                return  # FIFO: nobody behind the head goes first
            self._waiting.popleft()
            try:
                fut.get_loop().call_soon_threadsafe(self._grant, fut, weight)
            except RuntimeError:  # its event loop is closed (shutting down)
                continue
            self._running += weight

    def _grant(self, fut: asyncio.Future, weight: int) -> None:
        if fut.done():  # cancelled while the hand-over was queued: give the slots back
            self._release(weight)
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

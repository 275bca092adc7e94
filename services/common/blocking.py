"""Admitted, cancellable blocking work: the one bridge from a blocking function (a generation,
an evaluation, an export, a dataset pass) to a grpc.aio handler.

    result = await run_admitted(limiter, run_export, spec, config, stop="cancel")

    async with stream_admitted(limiter, run_evaluation, job, config, progress="progress") as call:
        async for event in call:      # what fn passed to its `progress` callback, in order
            yield to_proto(event)
        result = call.result()        # fn's return value (or its exception)

Either one:
- takes `weight` slots of the AdmissionLimiter first (default 1; the inference service passes
  the sequences a request decodes), RESOURCE_EXHAUSTED at once beyond its queue,
  DEADLINE_EXCEEDED when `timeout` passes while queued;
- runs `fn` in one of the limiter's worker threads with the caller's contextvars copied, so
  the request id stays on the worker's log lines;
- passes `fn` a stop flag (a `StopFlag`, keyword `stop`, default `should_stop`): both a
  callable (`should_stop()`) and a threading.Event (`cancel.is_set()`);
- on client cancellation (the handler task cancelled, the stream closed, or `context` done
  before the work ended) sets the flag and calls `cancel()`, so the work stops at its next
  check;
- releases the slot exactly once, when `fn` has really returned or raised (or, when it never
  started, when it was dropped), never while abandoned work is still running.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import logging
import threading
from typing import Any, Callable

from services.common.admission import AdmissionLimiter, Ticket

log = logging.getLogger("wintrain.blocking")

_END = object()  # end of a stream's event queue


class StopFlag(threading.Event):
    """Set when the client went away. Call it (`should_stop()`) or test it (`is_set()`)."""

    def __call__(self) -> bool:
        return self.is_set()


class AdmittedCall:
    """One admitted run of `fn`. Use as `async with`; iterate it for `progress` events."""

    def __init__(self, limiter: AdmissionLimiter, fn: Callable[..., Any], args: tuple, kwargs: dict, *,
                 stop: str | None, progress: str | None, cancel: Callable[[], None] | None,
                 timeout: float | None, context: Any, weight: int = 1):
        self.limiter, self.fn, self.args, self.kwargs = limiter, fn, args, dict(kwargs)
        self.weight = weight
        self.stop_flag = StopFlag()
        self._stop_arg, self._progress_arg = stop, progress
        self._on_cancel, self._timeout, self._context = cancel, timeout, context
        self._future: concurrent.futures.Future | None = None
        # Progress events: appended by the worker thread, taken by the event loop. The loop is
        # woken once per batch of events (not once per event): a per-token call_soon_threadsafe
        # and queue future cost a stream ~1 ms per token.
        self._queue: collections.deque | None = None
        self._queue_lock = threading.Lock()
        self._wake_pending = False
        self._waiter: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start and stop ----------------------------------------------------------------------
    async def __aenter__(self) -> "AdmittedCall":
        ticket: Ticket = await self.limiter.acquire(timeout=self._timeout, weight=self.weight)
        try:
            self._loop = asyncio.get_running_loop()
            kwargs = dict(self.kwargs)
            if self._stop_arg:
                kwargs[self._stop_arg] = self.stop_flag
            if self._progress_arg:
                self._queue = collections.deque()
                kwargs[self._progress_arg] = self._emit
            ctx = contextvars.copy_context()  # the request id (and any other contextvar) goes along
            self._future = self.limiter.executor.submit(ctx.run, self.fn, *self.args, **kwargs)
        except BaseException:
            ticket.release()
            raise
        # Runs in the worker thread when fn returns or raises (or here, if it never starts).
        self._future.add_done_callback(lambda _f: self._ended(ticket))
        if self._context is not None:
            # However the RPC ends (client gone, deadline), unfinished work is told to stop.
            self._context.add_done_callback(lambda _ctx: self.cancel())
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._future is not None and not self._future.done():
            self.cancel()
            log.info("blocking work stopping: the client went away",
                     extra={"work": getattr(self.fn, "__name__", str(self.fn))})

    def cancel(self) -> None:
        """Tell unfinished work to stop (idempotent; no effect once it has ended)."""
        future = self._future
        if future is None or future.done() or self.stop_flag.is_set():
            return
        self.stop_flag.set()
        future.cancel()  # not started yet: it never will (and its slot is released)
        if self._on_cancel is not None:
            self._on_cancel()

    def _ended(self, ticket: Ticket) -> None:
        ticket.release()
        if self._queue is not None:
            self._emit(_END)

    def _emit(self, *args: Any) -> None:
        """fn's progress callback (any thread) -> the event loop's queue, in order. One
        argument is queued as it is, several as a tuple."""
        item = args[0] if len(args) == 1 else args
        with self._queue_lock:
            self._queue.append(item)
            if self._wake_pending:
                return  # the loop has not run the last wake-up yet: it takes this one too
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.stop_flag.set()
            if self._on_cancel is not None:
                self._on_cancel()

    def _wake(self) -> None:  # on the event loop
        with self._queue_lock:
            self._wake_pending = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- results -----------------------------------------------------------------------------
    def __aiter__(self) -> "AdmittedCall":
        if self._queue is None:
            raise TypeError("iterate a call started with progress=...")
        return self

    async def __anext__(self) -> Any:
        while True:
            with self._queue_lock:
                if self._queue:
                    item = self._queue.popleft()
                    break
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if item is _END:
            raise StopAsyncIteration
        return item

    async def wait(self) -> Any:
        """fn's return value; raises what fn raised. Cancelling the waiter cancels the work."""
        return await asyncio.wrap_future(self._future)

    def result(self) -> Any:
        """fn's return value once it has ended (after the iteration ended)."""
        return self._future.result(timeout=0)


def stream_admitted(limiter: AdmissionLimiter, fn: Callable[..., Any], *args: Any, progress: str = "progress",
                    stop: str | None = "should_stop", cancel: Callable[[], None] | None = None,
                    timeout: float | None = None, context: Any = None, weight: int = 1,
                    **kwargs: Any) -> AdmittedCall:
    """An AdmittedCall whose `fn` gets a progress callback as keyword `progress`; iterate the
    call for what it passes, then read `call.result()`. See the module docstring."""
    return AdmittedCall(limiter, fn, args, kwargs, stop=stop, progress=progress, cancel=cancel,
                        timeout=timeout, context=context, weight=weight)


async def run_admitted(limiter: AdmissionLimiter, fn: Callable[..., Any], *args: Any,
                       stop: str | None = "should_stop", cancel: Callable[[], None] | None = None,
                       timeout: float | None = None, context: Any = None, weight: int = 1,
                       **kwargs: Any) -> Any:
    """`fn(*args, **kwargs, <stop>=StopFlag)` in an admitted worker thread; its result.
    See the module docstring."""
    async with AdmittedCall(limiter, fn, args, kwargs, stop=stop, progress=None, cancel=cancel,
                            timeout=timeout, context=context, weight=weight) as call:
        return await call.wait()

"""services.common.blocking: admitted, cancellable blocking work. Unit tests on a real
AdmissionLimiter and real threads (no grpc here; the service tests cover the RPCs)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from services.common.admission import AdmissionLimiter, limiter_from_config
from services.common.blocking import StopFlag, run_admitted, stream_admitted
from services.common.config import ConfigError
from services.common.errors import ResourceExhausted
from services.common.logging_setup import request_id_var
from tests.support import wait_until


def _run(coro):
    return asyncio.run(coro)


def _wait_until(predicate, timeout: float = 5.0) -> bool:
    return wait_until(predicate, timeout, 0.01)


def test_success_returns_and_frees_the_slot():
    limiter = AdmissionLimiter(1, 0)

    async def main():
        seen = {}

        def work(a, b, *, should_stop):
            seen["flag"] = should_stop
            seen["running"] = limiter.running
            return a + b

        assert await run_admitted(limiter, work, 2, 3) == 5
        assert isinstance(seen["flag"], StopFlag) and not seen["flag"]()
        assert seen["running"] == 1
        assert _wait_until(lambda: limiter.running == 0)
        # The slot is really free: a second call is admitted with max_queue=0.
        assert await run_admitted(limiter, work, 1, 1) == 2

    _run(main())


def test_an_error_is_raised_and_frees_the_slot():
    limiter = AdmissionLimiter(1, 0)

    def boom(*, should_stop):
        raise ValueError("broken")

    async def main():
        with pytest.raises(ValueError, match="broken"):
            await run_admitted(limiter, boom)
        assert _wait_until(lambda: limiter.running == 0)

    _run(main())


def test_beyond_the_queue_is_refused_at_once():
    limiter = AdmissionLimiter(1, 0, what="things", section="thing")
    release = threading.Event()

    async def main():
        first = asyncio.ensure_future(run_admitted(limiter, lambda *, should_stop: release.wait(5)))
        await asyncio.sleep(0.05)
        with pytest.raises(ResourceExhausted, match="thing.max_queue=0"):
            await run_admitted(limiter, lambda *, should_stop: None)
        release.set()
        assert await first is True

    _run(main())


def test_the_request_context_is_copied_into_the_thread():
    limiter = AdmissionLimiter(1, 0)

    async def main():
        request_id_var.set("req-42")
        return await run_admitted(limiter, lambda *, should_stop: (request_id_var.get(),
                                                                   threading.current_thread().name))

    rid, thread = _run(main())
    assert rid == "req-42"
    assert thread != threading.main_thread().name


def test_cancel_signals_the_work_and_frees_the_slot_only_when_it_stops():
    limiter = AdmissionLimiter(1, 1)
    started, may_end, ended = threading.Event(), threading.Event(), threading.Event()
    hook = []

    def work(*, should_stop):
        started.set()
        while not should_stop():
            time.sleep(0.005)
        may_end.wait(5)  # cleanup takes a while after the stop is seen
        ended.set()
        return "stopped"

    async def main():
        task = asyncio.ensure_future(run_admitted(limiter, work, cancel=lambda: hook.append(1)))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hook == [1]
        await asyncio.sleep(0.05)
        assert limiter.running == 1, "the slot is held while the abandoned work still runs"
        may_end.set()
        await asyncio.to_thread(ended.wait, 5)
        assert await asyncio.to_thread(_wait_until, lambda: limiter.running == 0)

    _run(main())


def test_work_cancelled_while_queued_never_runs_and_holds_no_slot():
    limiter = AdmissionLimiter(1, 2)
    release = threading.Event()
    ran = []

    async def main():
        first = asyncio.ensure_future(run_admitted(limiter, lambda *, should_stop: release.wait(5)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(run_admitted(limiter, lambda *, should_stop: ran.append(1)))
        await asyncio.sleep(0.05)
        assert limiter.waiting == 1
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        release.set()
        await first
        assert await asyncio.to_thread(_wait_until, lambda: limiter.running == 0 and limiter.waiting == 0)
        assert ran == []

    _run(main())


def test_stream_yields_progress_in_order_then_the_result():
    limiter = AdmissionLimiter(1, 0)

    def work(n, *, progress, should_stop):
        for i in range(n):
            progress("step", i, n)
        progress("last")
        return "done"

    async def main():
        async with stream_admitted(limiter, work, 50) as call:
            events = [e async for e in call]
            result = call.result()
        return events, result

    events, result = _run(main())
    assert events == [("step", i, 50) for i in range(50)] + ["last"]
    assert result == "done"
    assert _wait_until(lambda: limiter.running == 0)


def test_a_stream_left_early_stops_the_work():
    limiter = AdmissionLimiter(1, 0)
    stopped = threading.Event()

    def work(*, progress, should_stop):
        i = 0
        while not should_stop():
            progress(i)
            i += 1
            time.sleep(0.002)
        stopped.set()
        return i

    async def consumer():
        async with stream_admitted(limiter, work) as call:
            async for item in call:
                if item >= 3:
                    yield item
                    return

    async def main():
        agen = consumer()
        assert await agen.__anext__() == 3
        await agen.aclose()  # the client went away mid-stream (GeneratorExit at the yield)
        assert await asyncio.to_thread(stopped.wait, 5)
        assert await asyncio.to_thread(_wait_until, lambda: limiter.running == 0)

    _run(main())


def test_the_stop_flag_goes_under_the_named_keyword_and_context_done_cancels():
    limiter = AdmissionLimiter(1, 0)

    class Context:  # what grpc.aio's ServicerContext offers: done callbacks
        def __init__(self):
            self.callbacks = []

        def add_done_callback(self, cb):
            self.callbacks.append(cb)

    def work(cancel):
        assert cancel.wait(5)  # an Event too
        return "saw the stop"

    async def main():
        ctx = Context()
        task = asyncio.ensure_future(run_admitted(limiter, work, stop="cancel", context=ctx))
        await asyncio.sleep(0.05)
        for cb in ctx.callbacks:  # the RPC ended (client gone) while the work runs
            cb(ctx)
        return await task

    assert _run(main()) == "saw the stop"


def test_limiter_from_config_names_a_bad_key(config):
    limiter = limiter_from_config(config.with_overrides({"dataset.max_queue": 3}), "dataset", what="x",
                                  max_concurrent=2, max_queue=8)
    assert (limiter.max_queue, limiter.max_concurrent) == (3, 2)
    with pytest.raises(ConfigError, match="eval.max_concurrent"):
        limiter_from_config(config.with_overrides({"eval.max_concurrent": 0}), "eval", what="x",
                            max_concurrent=1, max_queue=1)

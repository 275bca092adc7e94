"""Weighted admission tickets (services.common.admission): a request takes `weight` slots of
max_concurrent, the queue stays strictly FIFO, a ticket gives back exactly its weight once, and
a weight above max_concurrent is clamped so the request still runs alone. Real asyncio, real
threads; no mocks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.admission import AdmissionLimiter
from services.common.errors import DeadlineExceeded, ResourceExhausted


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_weights_fill_the_slots_and_beyond_that_the_queue_then_refuse():
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=4, max_queue=1, what="sequences")
        three = await limiter.acquire(weight=3)
        one = await limiter.acquire(weight=1)
        assert limiter.running == 4 and (three.weight, one.weight) == (3, 1)
        queued = asyncio.ensure_future(limiter.acquire(weight=2))
        await _settle()
        assert limiter.waiting == 1 and not queued.done()
        with pytest.raises(ResourceExhausted) as err:
            await limiter.acquire(weight=1)
        assert "4 of 4 sequences running" in str(err.value) and "needs 1" in str(err.value)
        one.release()  # 1 free: the head needs 2, so it keeps waiting
        await _settle()
        assert not queued.done() and limiter.running == 3
        threading.Thread(target=three.release).start()  # released from a worker thread
        two = await asyncio.wait_for(queued, 2)
        assert limiter.running == 2 and limiter.waiting == 0
        two.release()
        assert limiter.running == 0

    asyncio.run(scenario())


def test_release_gives_back_its_weight_exactly_once():
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=4, max_queue=0)
        a = await limiter.acquire(weight=2)
        b = await limiter.acquire(weight=2)
        a.release()
        a.release()
        threads = [threading.Thread(target=a.release) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert limiter.running == 2, "a ticket released twice must not free another ticket's slots"
        with pytest.raises(ResourceExhausted):
            await limiter.acquire(weight=3)
        b.release()
        assert limiter.running == 0

    asyncio.run(scenario())


def test_fifo_nobody_jumps_a_heavy_head():
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=4, max_queue=4)
        held = [await limiter.acquire(weight=1) for _ in range(3)]
        order: list[str] = []

        async def take(name, weight):
            ticket = await limiter.acquire(weight=weight)
            order.append(name)
            return ticket

        heavy = asyncio.ensure_future(take("heavy", 4))
        await _settle()
        light = asyncio.ensure_future(take("light", 1))  # 1 slot is free, but heavy is first
        await _settle()
        assert order == [] and limiter.waiting == 2 and limiter.running == 3
        for ticket in held:
            ticket.release()
        big = await asyncio.wait_for(heavy, 2)
        await _settle()
        assert order == ["heavy"] and not light.done()
        big.release()
        small = await asyncio.wait_for(light, 2)
        assert order == ["heavy", "light"]
        small.release()
        assert limiter.running == 0 and limiter.waiting == 0

    asyncio.run(scenario())


def test_several_light_waiters_are_admitted_together_in_order():
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=4, max_queue=4)
        full = await limiter.acquire(weight=4)
        waiters = [asyncio.ensure_future(limiter.acquire(weight=w)) for w in (2, 1, 1, 1)]
        await _settle()
        full.release()
        tickets = await asyncio.wait_for(asyncio.gather(*waiters[:3]), 2)
        await _settle()
        assert limiter.running == 4 and not waiters[3].done()
        tickets[0].release()
        last = await asyncio.wait_for(waiters[3], 2)
        assert limiter.running == 3
        for t in (*tickets[1:], last):
            t.release()
        assert limiter.running == 0

    asyncio.run(scenario())


def test_a_weight_above_max_concurrent_is_clamped_and_runs_alone():
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=4, max_queue=1)
        assert limiter.weight_of(256) == 4 and limiter.weight_of(0) == 1
        alone = await limiter.acquire(weight=256)  # not refused for its size
        assert alone.weight == 4 and limiter.running == 4
        queued = asyncio.ensure_future(limiter.acquire(weight=1))
        await _settle()
        assert not queued.done()
        alone.release()
        one = await asyncio.wait_for(queued, 2)
        big = asyncio.ensure_future(limiter.acquire(weight=10))  # waits for the whole limiter
        await _settle()
        assert not big.done()
        one.release()
        (await asyncio.wait_for(big, 2)).release()
        assert limiter.running == 0

    asyncio.run(scenario())


def test_a_heavy_head_that_gives_up_lets_the_lighter_waiters_behind_it_in():
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=4, max_queue=2)
        held = await limiter.acquire(weight=3)
        heavy = asyncio.ensure_future(limiter.acquire(weight=2, timeout=0.05))
        await _settle()
        light = asyncio.ensure_future(limiter.acquire(weight=1))
        await _settle()
        assert not light.done()
        with pytest.raises(DeadlineExceeded):
            await heavy
        one = await asyncio.wait_for(light, 2)  # it fits in the 1 free slot now
        assert limiter.running == 4 and limiter.waiting == 0
        # A cancelled waiter's place goes as well.
        cancelled = asyncio.ensure_future(limiter.acquire(weight=2))
        await _settle()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        held.release()
        one.release()
        assert limiter.running == 0 and limiter.waiting == 0

    asyncio.run(scenario())


def test_waiters_cancelled_during_the_hand_over_give_their_slots_back():
    """The hand-over reaches a waiter through its event loop; one cancelled in between gives
    the slots back instead of keeping them."""
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=2, max_queue=2)
        held = await limiter.acquire(weight=2)
        first = asyncio.ensure_future(limiter.acquire(weight=2))
        second = asyncio.ensure_future(limiter.acquire(weight=1))
        await _settle()
        held.release()  # hands 2 slots to `first` (its wake-up is queued on this loop)
        first.cancel()  # ... which gives up before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        got = await asyncio.wait_for(second, 2)
        assert limiter.running == 1
        got.release()
        assert limiter.running == 0 and limiter.waiting == 0

    asyncio.run(scenario())

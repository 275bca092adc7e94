"""A client that goes away stops its generation within a step and frees its slot, for unary
Chat as for streams, and the tokens generated before it left are still counted in
wintrain_tokens_generated_total. Real in-process InferenceService, real generation."""

from __future__ import annotations

import time

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.inference.conftest import chat, inference_server
from tests.support import wait_until
from wintrain.inference.v1 import inference_pb2 as pb

LONG = dict(max_tokens=1000, min_tokens=1000, temperature=0)  # cannot end early on its own


def _tokens_counted() -> float:
    return REGISTRY.get_sample_value("wintrain_tokens_generated_total") or 0.0


def _wait(predicate, timeout: float = 20.0) -> bool:
    return wait_until(predicate, timeout, 0.01)


def test_a_unary_chat_whose_client_leaves_stops_and_frees_its_slot(config):
    cfg = config.with_overrides({"inference.max_concurrent": 1, "inference.max_queue": 0})
    with inference_server(cfg) as (_server, stub, servicer):
        stub.LoadModel(pb.LoadModelRequest(), timeout=60)
        before = _tokens_counted()
        call = stub.Chat.future(chat("hi", **LONG), timeout=120, metadata=(("x-request-id", "unary-gone"),))
        assert _wait(lambda: "unary-gone" in servicer.runs and servicer.runs["unary-gone"].generated >= 5)
        run = servicer.runs["unary-gone"]
        cancelled_at = time.monotonic()
        call.cancel()
        assert run.finished.wait(10), "generation did not stop"
        assert run.finished_at - cancelled_at < 2.0
        assert run.generated < 1000 and run.stopped_by == "cancel"
        assert _wait(lambda: servicer.limiter.running == 0)
        with pytest.raises(grpc.FutureCancelledError):
            call.result()
        assert _tokens_counted() - before >= run.generated >= 5
        # The slot is free again: with max_concurrent=1 and no queue, a new request runs.
        assert stub.Chat(chat("hi", max_tokens=2), timeout=60).usage.completion_tokens >= 1


def test_a_cancelled_streams_tokens_are_counted(config):
    with inference_server(config) as (_server, stub, servicer):
        stub.LoadModel(pb.LoadModelRequest(), timeout=60)
        before = _tokens_counted()
        call = stub.ChatStream(chat("hi", **LONG), timeout=120, metadata=(("x-request-id", "stream-gone"),))
        for _ in range(5):
            next(call)
        call.cancel()
        run = servicer.runs["stream-gone"]
        assert run.finished.wait(10)
        assert run.stopped_by == "cancel"
        assert _tokens_counted() - before >= run.generated >= 5
        # A finished chat counts exactly its completion tokens.
        before = _tokens_counted()
        reply = stub.Chat(chat("hi", max_tokens=4, min_tokens=4, temperature=0), timeout=60)
        assert _tokens_counted() - before == reply.usage.completion_tokens == 4

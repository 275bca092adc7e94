"""Admission counts sequences, not requests (issue 17 item 1): against the real
InferenceService, a Chat/ChatStream takes n slots of inference.max_concurrent and a Batch
min(len(prompts), inference.batch_size); beyond them, RESOURCE_EXHAUSTED naming sequences."""

from __future__ import annotations

import time

import grpc
import pytest

from tests.inference.conftest import chat, inference_server
from tests.support import wait_until
from wintrain.inference.v1 import inference_pb2 as pb

LONG = dict(max_tokens=1000, min_tokens=1000, temperature=0)  # cannot end early on its own


def _wait(predicate, timeout: float = 10.0) -> bool:
    return wait_until(predicate, timeout, 0.02)


def _refused(call) -> grpc.RpcError:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert time.monotonic() - started < 5  # at once, not after waiting
    return err.value


def test_admission_counts_the_sequences_of_a_request(config):
    cfg = config.with_overrides({"inference.max_concurrent": 4, "inference.max_queue": 0})
    with inference_server(cfg) as (_server, stub, servicer):
        stub.LoadModel(pb.LoadModelRequest(), timeout=60)

        # One streaming chat with n=4 holds all 4 slots: a single n=1 request is refused.
        four = stub.ChatStream(chat("hi", n=4, **LONG), timeout=120)
        next(four)
        assert servicer.limiter.running == 4
        err = _refused(lambda: stub.Chat(chat("one more", max_tokens=2), timeout=30))
        assert "sequences" in err.details() and "inference.max_concurrent=4" in err.details()
        four.cancel()
        assert _wait(lambda: servicer.limiter.running == 0)

        # Two n=2 requests both run at once (they would not if each took the n=4 request's share).
        a = stub.ChatStream(chat("first", n=2, **LONG), timeout=120)
        b = stub.ChatStream(chat("second", n=2, **LONG), timeout=120)
        next(a)
        next(b)
        assert servicer.limiter.running == 4
        _refused(lambda: next(stub.ChatStream(chat("third", max_tokens=2), timeout=30)))
        a.cancel()
        assert _wait(lambda: servicer.limiter.running == 2)
        # A Batch weighs its prompts: 3 do not fit in the 2 free slots, 2 do.
        _refused(lambda: stub.Batch(pb.BatchRequest(prompts=["x", "y", "z"], max_tokens=2), timeout=30))
        done = stub.Batch(pb.BatchRequest(prompts=["x", "y"], max_tokens=2), timeout=60)
        assert len(done.results) == 2
        b.cancel()
        assert _wait(lambda: servicer.limiter.running == 0)

        # More prompts than max_concurrent is clamped, not refused: it runs alone.
        done = stub.Batch(pb.BatchRequest(prompts=[f"p{i}" for i in range(6)], max_tokens=2), timeout=60)
        assert len(done.results) == 6
        assert _wait(lambda: servicer.limiter.running == 0)

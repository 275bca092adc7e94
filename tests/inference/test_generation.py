"""In-process gRPC tests of generation: stream = unary under greedy, seeds, Chinese streaming,
stop sequences, batch order, adapters, validation, cancellation, overload and deadlines."""

from __future__ import annotations

import time

import grpc
import pytest

from services.common.rpc_status import decode_rpc_error
from tests.inference.conftest import CHINESE_ANSWER, CHINESE_PROMPT, chat, inference_server
from tests.inference.test_registry import make_adapter
from tests.support import make_config, wait_until
from wintrain.inference.v1 import inference_pb2 as pb

PROMPTS = ["你好", "What is the capital of Zorbia?", "讲一个故事", "Tell me about cats.", "天气怎么样", "Why is the sky blue?"]
LONG = dict(max_tokens=1000, min_tokens=1000, temperature=0)  # cannot end early on its own


def _stream(stub, request, **kw):
    events = list(stub.ChatStream(request, timeout=120, **kw))
    *pieces, last = events
    return pieces, last


def test_greedy_stream_equals_unary(noisy_config):
    with inference_server(noisy_config) as (_server, stub, _servicer):
        for prompt in PROMPTS[:3]:
            request = chat(prompt, max_tokens=24, temperature=0)
            unary = stub.Chat(request, timeout=120)
            pieces, last = _stream(stub, request)
            assert all(p.token and not p.HasField("finish_reason") for p in pieces)
            assert "".join(p.token for p in pieces) == unary.content
            assert last.token == "" and last.finish_reason == unary.finish_reason
            assert last.usage == unary.usage and last.usage.completion_tokens > 0
            assert unary.finish_reason in ("stop", "length")


def test_same_seed_same_sample_even_concurrently(noisy_config):
    cfg = noisy_config.with_overrides({"inference.max_concurrent": 3})
    with inference_server(cfg) as (_server, stub, _servicer):
        def sampled(seed):
            return chat("hello", max_tokens=16, temperature=1.0, top_p=1.0, top_k=0, seed=seed)

        first = stub.Chat(sampled(7), timeout=60).content
        assert stub.Chat(sampled(7), timeout=60).content == first
        assert stub.Chat(sampled(8), timeout=60).content != first
        # Seeds are per request, not torch's global RNG: concurrent requests keep them.
        futures = [stub.Chat.future(sampled(s), timeout=120) for s in (7, 8, 7)]
        results = [f.result().content for f in futures]
        assert results[0] == results[2] == first and results[1] != first
        # The streamed sample is the same sample.
        pieces, _last = _stream(stub, sampled(7))
        assert "".join(p.token for p in pieces) == first


@pytest.mark.slow  # its model is taught with a few dozen real optimizer steps
def test_chinese_streams_in_whole_characters(chinese_model_dir, workspace):
    with inference_server(make_config(workspace, chinese_model_dir)) as (_server, stub, _servicer):
        request = chat(CHINESE_PROMPT, max_tokens=40, temperature=0)
        unary = stub.Chat(request, timeout=60)
        assert unary.content == CHINESE_ANSWER and unary.finish_reason == "stop"
        pieces, last = _stream(stub, request)
        tokens = [p.token for p in pieces]
        assert all(t and "\ufffd" not in t for t in tokens), tokens
        assert "".join(tokens) == CHINESE_ANSWER
        # Several tokens made up some characters, and they arrived together.
        assert len(tokens) < last.usage.completion_tokens - 1
        assert last.finish_reason == "stop"


def test_stop_sequences_end_the_answer(noisy_config):
    with inference_server(noisy_config) as (_server, stub, _servicer):
        full = stub.Chat(chat("Why is the sky blue?", max_tokens=24, temperature=0), timeout=60)
        text = full.content
        start = next(i for i in range(4, len(text) - 3) if "\ufffd" not in text[i:i + 2])
        stop = text[start:start + 2]
        cut = text.find(stop)
        request = chat("Why is the sky blue?", max_tokens=24, temperature=0, stop=[stop, "never-there"])
        reply = stub.Chat(request, timeout=60)
        assert reply.content == text[:cut] and reply.finish_reason == "stop"
        assert reply.usage.completion_tokens < full.usage.completion_tokens
        pieces, last = _stream(stub, request)
        assert "".join(p.token for p in pieces) == reply.content and last.finish_reason == "stop"


def test_batch_results_match_single_greedy_chats_in_prompt_order(noisy_config):
    cfg = noisy_config.with_overrides({"inference.batch_size": 4})
    with inference_server(cfg) as (_server, stub, _servicer):
        singles = [stub.Chat(chat(p, max_tokens=10, temperature=0), timeout=60) for p in PROMPTS]
        batch = stub.Batch(pb.BatchRequest(prompts=PROMPTS, max_tokens=10, temperature=0), timeout=120)
        assert len(set(batch.results)) >= 4  # the answers differ, so order is really checked
        assert list(batch.results) == [s.content for s in singles]
        assert list(batch.finish_reasons) == [s.finish_reason for s in singles]
        assert batch.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
        assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
        # Sampled batches are reproducible with a seed.
        sampled = pb.BatchRequest(prompts=PROMPTS[:3], max_tokens=8, temperature=1.0, top_k=0, top_p=1.0, seed=3)
        assert stub.Batch(sampled, timeout=60).results == stub.Batch(sampled, timeout=60).results


def test_an_adapter_changes_the_answers(config, tiny_model_dir, workspace):
    make_adapter(tiny_model_dir, workspace / "adapters" / "a1")
    with inference_server(config) as (_server, stub, _servicer):
        for prompt in ("你好", "Why is the sky blue?"):
            base = stub.Chat(chat(prompt, max_tokens=12, temperature=0), timeout=60).content
            tuned = stub.Chat(chat(prompt, model_path="adapters/a1", max_tokens=12, temperature=0), timeout=60).content
            assert tuned != base, prompt


@pytest.mark.parametrize("request_kwargs,field", [
    (dict(messages=[]), "messages"),
    (dict(messages=[pb.ChatMessage(role="user", content="a"), pb.ChatMessage(role="wizard", content="b")]),
     "messages[1].role"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=100_000), "max_tokens"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(stop=[""]), "stop[0]"),
    (dict(min_tokens=50, max_tokens=10), "min_tokens"),
])
def test_bad_chat_requests_are_invalid_argument_naming_the_field(config, request_kwargs, field):
    kwargs = {"messages": [pb.ChatMessage(role="user", content="hi")], **request_kwargs}
    with inference_server(config) as (_server, stub, _servicer):
        for call in (stub.Chat, lambda r, timeout: list(stub.ChatStream(r, timeout=timeout))):
            with pytest.raises(grpc.RpcError) as err:
                call(pb.ChatRequest(**kwargs), timeout=10)
            failure = decode_rpc_error(err.value)
            assert failure.code == "INVALID_ARGUMENT"
            assert field in [f for f, _ in failure.field_violations]


def test_bad_batch_requests_are_invalid_argument(config):
    cfg = config.with_overrides({"inference.max_batch_prompts": 3})
    with inference_server(cfg) as (_server, stub, _servicer):
        for request, field in [
            (pb.BatchRequest(prompts=[]), "prompts"),
            (pb.BatchRequest(prompts=["a", "b", "c", "d"]), "prompts"),
            (pb.BatchRequest(prompts=["a", " "]), "prompts[1]"),
            (pb.BatchRequest(prompts=["a"], max_tokens=0), "max_tokens"),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.Batch(request, timeout=10)
            failure = decode_rpc_error(err.value)
            assert failure.code == "INVALID_ARGUMENT" and field in [f for f, _ in failure.field_violations]


def test_the_model_context_bounds_the_prompt_and_the_answer(config, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    unit = "cats and dogs "
    per_unit = len(tok.encode(unit * 10)) / 10
    with inference_server(config) as (_server, stub, _servicer):
        with pytest.raises(grpc.RpcError) as err:
            stub.Chat(chat(unit * int(1100 / per_unit), max_tokens=5), timeout=60)
        failure = decode_rpc_error(err.value)
        assert failure.code == "INVALID_ARGUMENT" and failure.field_violations[0][0] == "messages"
        with pytest.raises(grpc.RpcError) as err:
            stub.Batch(pb.BatchRequest(prompts=["short", unit * int(1100 / per_unit)], max_tokens=5), timeout=60)
        assert decode_rpc_error(err.value).field_violations[0][0] == "prompts[1]"
        # A prompt that leaves little room: the answer ends at the end of the context.
        reply = stub.Chat(chat(unit * int(1000 / per_unit), max_tokens=200, min_tokens=200, temperature=0), timeout=60)
        assert reply.finish_reason == "length" and reply.usage.total_tokens == 1024


def _wait(predicate, timeout: float = 10.0) -> bool:
    return wait_until(predicate, timeout, 0.02)


def test_cancelling_a_stream_stops_generation_and_frees_the_slot(config):
    cfg = config.with_overrides({"inference.max_concurrent": 1, "inference.max_queue": 0})
    with inference_server(cfg) as (_server, stub, servicer):
        stub.LoadModel(pb.LoadModelRequest(), timeout=60)
        call = stub.ChatStream(chat("hi", **LONG), timeout=120, metadata=(("x-request-id", "cancel-me"),))
        first = next(call)
        assert first.token
        cancelled_at = time.monotonic()
        call.cancel()
        run = servicer.runs["cancel-me"]
        assert run.finished.wait(10), "generation did not stop"
        assert run.finished_at - cancelled_at < 2.0
        assert run.generated < 200 and run.stopped_by == "cancel"
        assert servicer.limiter.running == 0
        # The slot is free again: with max_concurrent=1 and no queue, a new request runs.
        assert stub.Chat(chat("hi", max_tokens=2), timeout=60).usage.completion_tokens >= 1


def test_overload_is_refused_at_once_and_a_queued_request_waits(config):
    cfg = config.with_overrides({"inference.max_concurrent": 1, "inference.max_queue": 1})
    with inference_server(cfg) as (_server, stub, servicer):
        stub.LoadModel(pb.LoadModelRequest(), timeout=60)
        busy = stub.ChatStream(chat("hi", **LONG), timeout=120)
        next(busy)
        queued = stub.Chat.future(chat("queued", max_tokens=3, temperature=0), timeout=120)
        assert _wait(lambda: servicer.limiter.waiting == 1)
        started = time.monotonic()
        for call in (lambda: stub.Chat(chat("more", max_tokens=2), timeout=30),
                     lambda: stub.Batch(pb.BatchRequest(prompts=["x"], max_tokens=2), timeout=30),
                     lambda: next(stub.ChatStream(chat("more", max_tokens=2), timeout=30))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 5  # refused at once, not after waiting
        assert not queued.done()
        busy.cancel()
        assert queued.result().usage.completion_tokens >= 1
        assert _wait(lambda: servicer.limiter.running == 0)


def test_deadline_stops_a_unary_generation(config):
    with inference_server(config) as (_server, stub, servicer):
        stub.LoadModel(pb.LoadModelRequest(), timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            stub.Chat(chat("hi", **LONG), timeout=1.0, metadata=(("x-request-id", "too-slow"),))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        run = servicer.runs["too-slow"]
        assert run.finished.wait(10)
        assert run.generated < 1000 and run.stopped_by in ("deadline", "cancel")
        assert _wait(lambda: servicer.limiter.running == 0)


def test_the_default_max_tokens_fits_a_lower_deployment_cap(workspace, noisy_model_dir):
    """With inference.max_new_tokens_cap below the documented default (512), requests that never
    name max_tokens are answered within the cap; a max_tokens the client names over it is
    INVALID_ARGUMENT naming the field."""
    cfg = make_config(workspace, noisy_model_dir, **{"inference.max_new_tokens_cap": 6})
    with inference_server(cfg) as (_server, stub, _servicer):
        resp = stub.Chat(chat("hello", min_tokens=6), timeout=120)
        assert resp.usage.completion_tokens == 6 and resp.finish_reason == "length"
        streamed = list(stub.ChatStream(chat("hello", min_tokens=6), timeout=120))
        assert streamed[-1].usage.completion_tokens == 6
        batch = stub.Batch(pb.BatchRequest(prompts=["a", "b"], min_tokens=6), timeout=120)
        assert batch.usage.completion_tokens == 12
        with pytest.raises(grpc.RpcError) as err:
            stub.Chat(chat("hello", max_tokens=7), timeout=60)
        failure = decode_rpc_error(err.value)
        assert failure.code == "INVALID_ARGUMENT" and "max_tokens" in dict(failure.field_violations)

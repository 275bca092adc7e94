"""Continuous batching through a real in-process InferenceService on the noisy tiny model:
concurrent requests share decoding steps, each row keeps its own settings, a greedy answer is
the same alone and among 7 others, a seeded one is reproducible in any company, cancelling one
row leaves the others alone; logprobs, n, penalties and logit_bias are honoured or refused
naming the field."""

from __future__ import annotations

import math
import threading
import time

import grpc
import pytest

from services.inference import scheduler
from tests.inference.conftest import chat, concurrently, inference_server
from tests.support import make_config, wait_until
from wintrain.inference.v1 import inference_pb2 as pb

PROMPTS = ["hi", "tell me a story about a cat", "你好", "what is 2+2?", "one", "two three four five six",
           "seven", "eight nine ten"]
GREEDY = dict(max_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def served(noisy_model_dir, tmp_path_factory):
    cfg = make_config(tmp_path_factory.mktemp("ws"), noisy_model_dir)
    with inference_server(cfg) as (server, stub, servicer):
        stub.LoadModel(pb.LoadModelRequest(), timeout=120)
        yield stub, servicer


def _widest() -> int:
    return scheduler.STATS["peak_rows"]


def _concurrently(fns):
    return concurrently(fns, join_seconds=120)


def _stream_text(stub, request) -> str:
    return "".join(m.token for m in stub.ChatStream(request, timeout=120))


def test_greedy_answers_are_the_same_alone_and_among_seven_others(served):
    stub, servicer = served
    alone = [stub.Chat(chat(p, **GREEDY), timeout=120).content for p in PROMPTS]
    assert len(set(alone)) > 4, "the noisy model should answer prompts differently"
    scheduler.STATS["peak_rows"] = 0
    # 8 at once, half unary and half streamed: they share decoding steps.
    together = _concurrently([
        (lambda p=p: stub.Chat(chat(p, **GREEDY), timeout=120).content) if i % 2 else
        (lambda p=p: _stream_text(stub, chat(p, **GREEDY)))
        for i, p in enumerate(PROMPTS)])
    assert together == alone
    assert _widest() >= 4, "concurrent requests did not share a batch"


def test_a_seeded_sampled_answer_is_the_same_whatever_else_is_in_the_batch(served):
    stub, _servicer = served
    seeded = chat("tell me a story", max_tokens=24, temperature=0.9, top_p=0.9, top_k=40, seed=1234)
    alone = stub.Chat(seeded, timeout=120).content
    others = [chat(p, max_tokens=24, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS[:6])]
    results = _concurrently([lambda: stub.Chat(seeded, timeout=120).content]
                            + [lambda r=r: stub.Chat(r, timeout=120).content for r in others])
    assert results[0] == alone
    # A different seed gives a different answer (the seed is really used).
    other_seed = chat("tell me a story", max_tokens=24, temperature=0.9, top_p=0.9, top_k=40, seed=99)
    assert stub.Chat(other_seed, timeout=120).content != alone


def test_cancelling_one_row_never_disturbs_the_others(served):
    stub, servicer = served
    expected = [stub.Chat(chat(p, max_tokens=40, min_tokens=40, temperature=0), timeout=120).content
                for p in PROMPTS[:3]]
    long_call = stub.ChatStream(chat("hi", max_tokens=1000, min_tokens=1000, temperature=0), timeout=120,
                                metadata=(("x-request-id", "batch-cancel"),))
    next(long_call)  # generating
    results: list = [None] * 3

    def run(i):
        results[i] = _stream_text(stub, chat(PROMPTS[i], max_tokens=40, min_tokens=40, temperature=0))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    run_control = servicer.runs["batch-cancel"]
    assert wait_until(lambda: run_control.generated >= 10, 30, 0.01)
    cancelled_at = time.monotonic()
    long_call.cancel()
    assert run_control.finished.wait(10)
    assert run_control.finished_at - cancelled_at < 2.0 and run_control.stopped_by == "cancel"
    assert run_control.generated < 1000
    for t in threads:
        t.join(120)
    assert results == expected


def test_batch_rpc_rows_equal_single_chats(served):
    stub, _servicer = served
    reply = stub.Batch(pb.BatchRequest(prompts=PROMPTS[:5], max_tokens=16, temperature=0), timeout=120)
    singles = [stub.Chat(chat(p, max_tokens=16, temperature=0), timeout=120) for p in PROMPTS[:5]]
    assert list(reply.results) == [s.content for s in singles]
    assert reply.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)


def test_logprobs_and_top_logprobs_in_chat_and_stream(served):
    stub, _servicer = served
    request = chat("hi", max_tokens=12, min_tokens=12, temperature=0, logprobs=True, top_logprobs=5)
    reply = stub.Chat(request, timeout=120)
    assert len(reply.logprobs.content) == reply.usage.completion_tokens == 12
    for entry in reply.logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 5
        # Greedy: the chosen token is the most likely one, and tops are sorted.
        assert entry.top_logprobs[0].token == entry.token
        assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, rel_tol=1e-6)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    assert bytes(b for e in reply.logprobs.content for b in e.token_bytes).decode("utf-8", "replace").startswith(reply.content[:1])
    events = list(stub.ChatStream(request, timeout=120))
    streamed = [e for ev in events for e in ev.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in reply.logprobs.content][:len(streamed)]
    assert len(streamed) >= 10
    assert "".join(ev.token for ev in events) == reply.content
    # Without logprobs there are none (and greedy answers are unchanged by asking).
    plain = stub.Chat(chat("hi", max_tokens=12, min_tokens=12, temperature=0), timeout=120)
    assert not plain.HasField("logprobs") and plain.content == reply.content


def test_n_choices_share_the_batch_and_seed_each_choice(served):
    stub, _servicer = served
    request = chat("hi", max_tokens=16, temperature=1.0, seed=7, n=3)
    reply = stub.Chat(request, timeout=120)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.content for c in reply.choices}) == 3
    assert reply.content == reply.choices[0].content
    assert reply.usage.completion_tokens == sum(c.completion_tokens for c in reply.choices)
    # Choice i samples with seed + i: choice 1 is what n=1 with seed 8 gives.
    assert stub.Chat(chat("hi", max_tokens=16, temperature=1.0, seed=8), timeout=120).content == reply.choices[1].content
    # Streamed: each event names its choice; every choice ends with its own finish_reason.
    events = list(stub.ChatStream(request, timeout=120))
    texts = {i: "".join(e.token for e in events if e.index == i) for i in range(3)}
    assert texts == {c.index: c.content for c in reply.choices}
    assert sorted(e.index for e in events if e.HasField("finish_reason")) == [0, 1, 2]
    assert events[-1].usage.completion_tokens == reply.usage.completion_tokens


def _first_tokens(stub, **kwargs) -> list[str]:
    reply = stub.Chat(chat("hi", max_tokens=6, min_tokens=6, temperature=0, logprobs=True, **kwargs), timeout=120)
    return [e.token for e in reply.logprobs.content], reply


def test_logit_bias_bans_and_forces_tokens(served):
    stub, servicer = served
    tokenizer = servicer.registry.get(servicer.registry.default_source()).tokenizer
    tokens, _ = _first_tokens(stub)
    first_id = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(tokens[0]))[0]
    banned, _ = _first_tokens(stub, logit_bias={first_id: -100})
    assert banned[0] != tokens[0] and tokens[0] not in banned
    cat = tokenizer.encode(" cat")[0]
    forced, _ = _first_tokens(stub, logit_bias={cat: 60})
    assert forced == [" cat"] * 6


def _expected_after_penalty(logprob: float, penalty: float) -> float:
    """log p' of a token whose logit drops by `penalty` (the rest of the distribution unchanged)."""
    p = math.exp(logprob)
    return math.log(p * math.exp(-penalty) / (p * math.exp(-penalty) + 1 - p))


def test_frequency_and_presence_penalties_lower_a_repeated_tokens_logit(served):
    stub, servicer = served
    tokenizer = servicer.registry.get(servicer.registry.default_source()).tokenizer
    cat = tokenizer.encode(" cat")[0]
    bias = {cat: 30}
    tokens, plain = _first_tokens(stub, logit_bias=bias)
    assert tokens == [" cat"] * 6  # the precondition of the oracle below: same tokens, same contexts
    base = [e.logprob for e in plain.logprobs.content]
    tokens, freq = _first_tokens(stub, logit_bias=bias, frequency_penalty=0.5)
    assert tokens == [" cat"] * 6
    for k, entry in enumerate(freq.logprobs.content):  # k earlier " cat"s: the logit drops by 0.5 k
        assert math.isclose(entry.logprob, _expected_after_penalty(base[k], 0.5 * k), abs_tol=2e-3), k
    tokens, pres = _first_tokens(stub, logit_bias=bias, presence_penalty=1.5)
    assert tokens == [" cat"] * 6
    for k, entry in enumerate(pres.logprobs.content):  # once seen: the logit drops by 1.5, whatever k
        assert math.isclose(entry.logprob, _expected_after_penalty(base[k], 1.5 if k else 0.0), abs_tol=2e-3), k


@pytest.mark.parametrize("fields, named", [
    (dict(frequency_penalty=2.5), "frequency_penalty"),
    (dict(presence_penalty=-3), "presence_penalty"),
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(n=9), "n"),
    (dict(n=0), "n"),
    (dict(logit_bias={10_000_000: 1.0}), "logit_bias[10000000]"),
    (dict(logit_bias={5: 101.0}), "logit_bias[5]"),
])
def test_bad_sampling_fields_are_refused_naming_the_field(served, fields, named):
    stub, _servicer = served
    with pytest.raises(grpc.RpcError) as err:
        stub.Chat(chat("hi", max_tokens=4, **fields), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in err.value.details()


def test_a_row_whose_own_processing_fails_ends_alone(noisy_model_dir):
    """A failing per-row logits hook fails that request only; the row beside it finishes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.inference import engine
    from services.inference.registry import describe_model

    model = AutoModelForCausalLM.from_pretrained(noisy_model_dir).eval()
    loaded = describe_model("m", None, model, AutoTokenizer.from_pretrained(noisy_model_dir), True)
    messages = [{"role": "user", "content": "hi"}]
    greedy = engine.SamplingParams(max_tokens=30, min_tokens=30)
    alone = engine.chat(loaded, messages, greedy, engine.RunControl()).content

    def hook(ids, logits):
        if len(ids) == 5:
            raise ValueError("hook broke")
        return logits

    errors: list = []
    out: list = []
    broken = threading.Thread(target=lambda: errors.append(_raises(lambda: engine.chat(
        loaded, messages, engine.SamplingParams(max_tokens=30, logits_hook=hook), engine.RunControl()))))
    fine = threading.Thread(target=lambda: out.append(engine.chat(loaded, messages, greedy, engine.RunControl())))
    broken.start()
    fine.start()
    broken.join(60)
    fine.join(60)
    assert isinstance(errors[0], ValueError)
    assert out[0].content == alone


def _raises(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None

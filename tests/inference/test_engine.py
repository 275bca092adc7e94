"""Unit tests of the inference domain code: incremental decoding, stop sequences, thinking
split, validation and admission control. No server, no model (only the tiny tokenizer)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from services.inference import engine
from services.common.admission import AdmissionLimiter


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _stream(tokenizer, ids, stops=()):
    pieces: list[str] = []
    dec = engine.StreamingDecoder(tokenizer, pieces.append, eos_ids=[tokenizer.eos_token_id], stops=stops)
    for tid in ids:  # one decoding step per token, as `generate` feeds a streamer
        dec.add([tid])
    dec.finish()
    return pieces


def test_streaming_decoder_emits_whole_chinese_characters(tokenizer):
    text = "饕餮龘鬱，你好世界！mixed English 和中文。"
    ids = tokenizer.encode(text)
    # The point of the test: some characters really are split over several tokens.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    pieces = _stream(tokenizer, ids)
    assert "".join(pieces) == text
    assert all(p and "\ufffd" not in p for p in pieces)
    assert len(pieces) < len(ids)  # held-back bytes joined their characters


def test_streaming_decoder_drops_a_dangling_partial_character_like_unary(tokenizer):
    ids = tokenizer.encode("好龘")
    cut = ids[:-1]  # ends in the middle of 龘
    pieces = _stream(tokenizer, cut)
    unary, _ = engine._final_text(tokenizer, cut, ())
    assert "".join(pieces) == unary == "好"


def test_streaming_decoder_stops_at_a_stop_sequence_and_never_leaks_it(tokenizer):
    text = "one two three END four five"
    ids = tokenizer.encode(text)
    pieces = _stream(tokenizer, ids, stops=("END", "xyz"))
    assert "".join(pieces) == "one two three "
    assert not any("E" in p for p in pieces)
    unary, hit = engine._final_text(tokenizer, ids, ("END", "xyz"))
    assert hit and unary == "".join(pieces)


def test_streaming_decoder_releases_a_held_back_near_miss(tokenizer):
    text = "abc EN and more"
    pieces = _stream(tokenizer, tokenizer.encode(text), stops=("END",))
    assert "".join(pieces) == text


def test_streaming_decoder_ends_at_eos(tokenizer):
    ids = tokenizer.encode("你好") + [tokenizer.eos_token_id] + tokenizer.encode("after")
    assert "".join(_stream(tokenizer, ids)) == "你好"


def test_split_thinking():
    assert engine.split_thinking("<think>\nplan it\n</think>\n\nThe answer.") == ("plan it", "The answer.")
    assert engine.split_thinking("already open\n</think>\n\nDone") == ("already open", "Done")
    assert engine.split_thinking("<think>still thinking") == ("still thinking", "")
    assert engine.split_thinking("plain answer") == ("", "plain answer")


def test_enable_thinking_reaches_the_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # A Qwen3-style template: without thinking, an empty think block is prefilled.
    tok.chat_template = (
        "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor %}"
        "<|im_start|>assistant\n{% if not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    )
    messages = [{"role": "user", "content": "hi"}]
    off = tok.decode(engine.render_prompt(tok, messages, enable_thinking=False))
    on = tok.decode(engine.render_prompt(tok, messages, enable_thinking=True))
    assert off.endswith("<think>\n\n</think>\n\n") and on.endswith("assistant\n")


def test_check_messages_names_the_field():
    with pytest.raises(InvalidArgument) as err:
        engine.check_messages([])
    assert err.value.field_violations[0][0] == "messages"
    with pytest.raises(InvalidArgument) as err:
        engine.check_messages([("user", "hi"), ("robot", "beep"), ("user", "x")])
    assert err.value.field_violations == [("messages[1].role", err.value.field_violations[0][1])]
    with pytest.raises(InvalidArgument) as err:
        engine.check_messages([("user", "hi"), ("system", "late")])
    assert err.value.field_violations[0][0] == "messages[1].role"
    assert engine.check_messages([("system", "s"), ("user", "u")])[1] == {"role": "user", "content": "u"}


def test_check_sampling_reports_every_bad_field():
    with pytest.raises(InvalidArgument) as err:
        engine.check_sampling(max_tokens=0, temperature=-1, top_p=0.0, top_k=-1, cap=10,
                              repetition_penalty=0, stop=["ok", ""])
    fields = [f for f, _ in err.value.field_violations]
    assert fields == ["max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop[1]"]
    with pytest.raises(InvalidArgument) as err:
        engine.check_sampling(max_tokens=11, temperature=0, top_p=1.5, top_k=0, cap=10)
    assert [f for f, _ in err.value.field_violations] == ["max_tokens", "top_p"]
    params = engine.check_sampling(max_tokens=10, temperature=0, top_p=1.0, top_k=0, cap=10)
    assert params.greedy and params.max_tokens == 10


def test_limiter_admits_queues_and_refuses():
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=1, max_queue=1)
        first = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.01)
        assert limiter.running == 1 and limiter.waiting == 1
        with pytest.raises(ResourceExhausted):
            await limiter.acquire()
        # Released from another thread (as a generation thread does): the waiter gets it.
        t = threading.Thread(target=first.release)
        t.start()
        t.join()
        second = await asyncio.wait_for(waiter, 2)
        assert limiter.running == 1 and limiter.waiting == 0
        first.release()  # idempotent: does not free the waiter's slot
        assert limiter.running == 1
        with pytest.raises(DeadlineExceeded):
            await limiter.acquire(timeout=0.05)
        assert limiter.waiting == 0
        second.release()
        assert limiter.running == 0

    asyncio.run(scenario())


def test_limiter_cancelled_waiter_gives_its_place_back():
    async def scenario():
        limiter = AdmissionLimiter(max_concurrent=1, max_queue=1)
        held = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.waiting == 0
        held.release()
        assert limiter.running == 0

    asyncio.run(scenario())

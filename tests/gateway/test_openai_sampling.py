"""OpenAI sampling parameters against the REAL InferenceService (tiny model, in-process gRPC
server on a free port, real gateway), driven by the OpenAI SDK: logprobs / top_logprobs (also
in streamed chunks), n, frequency_penalty, presence_penalty and logit_bias are honoured, or
refused with a 400 naming the parameter."""

from __future__ import annotations

import math

import openai
import pytest

from services.inference.server import register
from tests.gateway.helpers import gateway_over
from tests.support import InProcessServer, make_config

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    ws = tmp_path_factory.mktemp("openai-sampling") / "ws"
    config = make_config(ws, tiny_model_dir, **{"inference.max_n": 4})
    with InProcessServer(config, "inference", register) as inference, gateway_over(config, {"inference": inference}) as gw:
        yield gw


@pytest.fixture(scope="module")
def sdk(stack):
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def cat_id(tiny_model_dir) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir).encode(" cat")[0]


def test_logprobs_in_the_openai_shape(sdk):
    reply = sdk.chat.completions.create(model="default", messages=USER, max_tokens=6, temperature=0,
                                        extra_body={"min_tokens": 6}, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 6
    assert "".join(e.token for e in content) == reply.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy: the most likely one
        assert bytes(entry.bytes).decode("utf-8", "replace")
    # Asked for nothing: null, as OpenAI.
    plain = sdk.chat.completions.create(model="default", messages=USER, max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None


def test_logprobs_in_streamed_chunks(sdk):
    stream = sdk.chat.completions.create(model="default", messages=USER, max_tokens=8, temperature=0,
                                         extra_body={"min_tokens": 8}, logprobs=True, top_logprobs=2, stream=True)
    entries, text = [], ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                entries.extend(choice.logprobs.content)
    assert entries and all(len(e.top_logprobs) == 2 for e in entries)
    assert text.startswith("".join(e.token for e in entries).rstrip("\ufffd")[:1])
    assert len(entries) >= 6


def test_n_choices(sdk):
    reply = sdk.chat.completions.create(model="default", messages=USER, max_tokens=8, temperature=1.0, seed=3, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens >= 3
    stream = sdk.chat.completions.create(model="default", messages=USER, max_tokens=8, temperature=1.0, seed=3, n=3,
                                         stream=True)
    texts = {0: "", 1: "", 2: ""}
    finishes = []
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.index)
    assert texts == {c.index: c.message.content for c in reply.choices}
    assert sorted(finishes) == [0, 1, 2]
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="default", messages=USER, max_tokens=2, n=5)
    assert err.value.param == "n" and "inference.max_n" in err.value.message


def test_logit_bias_forces_a_token(sdk, cat_id):
    plain = sdk.chat.completions.create(model="default", messages=USER, max_tokens=4, temperature=0, logprobs=True)
    assert plain.choices[0].logprobs.content[0].token != " cat"
    forced = sdk.chat.completions.create(model="default", messages=USER, max_tokens=4, temperature=0,
                                         extra_body={"min_tokens": 4}, logit_bias={str(cat_id): 100})
    assert forced.choices[0].message.content == " cat" * 4


def test_penalties_change_the_logprobs_exactly(sdk, cat_id):
    bias = {str(cat_id): 100}
    common = dict(model="default", messages=USER, max_tokens=4, temperature=0, extra_body={"min_tokens": 4},
                  logit_bias=bias, logprobs=True)
    base = [e.logprob for e in sdk.chat.completions.create(**common).choices[0].logprobs.content]
    freq = sdk.chat.completions.create(**common, frequency_penalty=1.0).choices[0]
    pres = sdk.chat.completions.create(**common, presence_penalty=2.0).choices[0]
    assert freq.message.content == pres.message.content == " cat" * 4
    for k in range(4):
        for choice, drop in ((freq, 1.0 * k), (pres, 2.0 if k else 0.0)):
            p = math.exp(base[k])
            want = math.log(p * math.exp(-drop) / (p * math.exp(-drop) + 1 - p))
            assert math.isclose(choice.logprobs.content[k].logprob, want, abs_tol=2e-3), (k, drop)


@pytest.mark.parametrize("extra, param", [
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"logit_bias": {"cat": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 150}}, "logit_bias[5]"),
    ({"n": 0}, "n"),
])
def test_bad_sampling_parameters_are_400_naming_them(sdk, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="default", messages=USER, max_tokens=2, extra_body=extra)
    assert err.value.param == param, err.value.message

"""The OpenAI-compatible routes, driven by the OpenAI Python SDK: against a fake
InferenceService here (mapping and framing), and against the real one in test_contract.py."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture(scope="module")
def sdk(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0, timeout=20)


def test_chat_completion_maps_parameters(sdk):
    reply = sdk.chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "你"}, {"type": "text", "text": "好"}]}],
        max_tokens=7, temperature=0.2, stop=["\n"], seed=11,
    )
    assert reply.object == "chat.completion" and reply.model == "default"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content.startswith("echo:你好") and "roles=system,user" in content
    assert "seed=11" in content and "max_tokens=7" in content and "temperature=0.2" in content and "stop=\n" in content
    assert choice.finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 2, 5)


def test_model_name_selects_a_model_path_unless_default(sdk, client):
    r = client.post("/v1/chat/completions", json={"model": "adapters/a1", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and r.json()["model"] == "adapters/a1"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.json()["model"] == "default"
    with pytest.raises(openai.NotFoundError) as err:
        sdk.chat.completions.create(model="missing/model", messages=[{"role": "user", "content": "x"}])
    assert "missing/model" in str(err.value)


def test_streaming_chunks_finish_reason_usage_and_done(sdk):
    stream = sdk.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "你好!"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7


def test_stream_error_mid_way_raises_in_the_sdk(sdk):
    stream = sdk.chat.completions.create(model="default", messages=[{"role": "user", "content": "fail"}], stream=True)
    with pytest.raises(openai.APIError) as err:
        list(stream)
    assert "generation queue is full" in str(err.value)


def test_raw_stream_ends_with_done(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),  # n > 1 is served now (up to inference.max_n)
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "lots"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content[0]"),
])
def test_bad_requests_are_openai_style_400(client, body, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == "INVALID_ARGUMENT"


def test_models_lists_the_served_default_first(sdk):
    ids = [m.id for m in sdk.models.list()]
    # The default by its served name and by its folder name; a model outside the workspace by
    # its server path (inside it: workspace-relative, tested against the real service).
    assert ids == ["default", "no-model", "/m/adapter"]

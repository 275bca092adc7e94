"""The OpenAI surface (issue 17 item 4): every /v1 error in OpenAI's shape, typed errors in the
official SDK, `param` under OpenAI names, /v1/models/{id}, tools and tool_choice,
response_format. Against the fake InferenceService (the mapping); the real one is in
test_openai_real.py."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from gateway.openai_compat import ToolStreamParser, parse_tool_calls
from tests.gateway.helpers import GatewayServer, all_at

USER = [{"role": "user", "content": "x"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def sdk(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0, timeout=20)


def _openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---------------------------------------------------------------------------- error shape
def test_gateway_404_and_405_under_v1_are_openai_shaped(client, sdk):
    err = _openai_error(client.get("/v1/nothing/here"), 404)
    assert err["type"] == "not_found_error" and err["code"] == "NOT_FOUND"
    err = _openai_error(client.delete("/v1/chat/completions"), 405)
    assert err["code"] == "UNIMPLEMENTED"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("not/served")
    # Outside /v1 the gateway's own shape stays.
    assert client.get("/api/nothing").json()["success"] is False


def test_401_under_v1_is_openai_shaped_and_typed_in_the_sdk(base_config, fake_backend):
    config = all_at(base_config, fake_backend.port).with_overrides({"auth.api_keys": ["k-1"]})
    with GatewayServer(config) as gw:
        r = httpx.get(f"{gw.url}/v1/models")
        err = _openai_error(r, 401)
        assert err["type"] == "authentication_error" and err["code"] == "UNAUTHENTICATED"
        assert r.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{gw.url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="k-1", max_retries=0)
        assert good.models.list().data[0].id == "default"
        assert httpx.get(f"{gw.url}/api/inference/models").json()["success"] is False  # native shape


def test_backend_field_names_become_openai_params(client, sdk):
    # The fake answers NOT_FOUND naming model_path: the client sent `model`.
    err = _openai_error(client.post("/v1/chat/completions", json={"model": "missing/x", "messages": USER}), 404)
    assert err["param"] == "model" and err["type"] == "not_found_error"
    assert err["message"].startswith("model: 'missing/x'")
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.chat.completions.create(model="missing/x", messages=USER)
    assert exc.value.body["param"] == "model"


@pytest.mark.parametrize("body,param", [
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_completion_tokens": -1}, "max_completion_tokens"),
    ({"messages": USER, "temperature": "hot"}, "temperature"),
    ({"messages": USER, "top_p": 0}, "top_p"),
    ({"messages": USER, "top_p": 1.5}, "top_p"),
    ({"messages": USER, "max_tokens": True}, "max_tokens"),
    ({"messages": USER, "max_tokens": "5"}, "max_tokens"),
    ({"messages": USER, "seed": 2**64}, "seed"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": USER, "stop": 5}, "stop"),
    ({"messages": USER, "stream": "yes"}, "stream"),
    ({"messages": USER, "model": 3}, "model"),
    ({"messages": USER, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"messages": USER, "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"messages": USER, "tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
    ({"messages": USER, "tool_choice": "auto"}, "tool_choice"),
    ({"messages": USER, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"messages": USER, "tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),
    ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema"),
    ({"messages": USER, "response_format": {"type": "xml"}}, "response_format.type"),
])
def test_refusals_name_the_openai_param(client, body, param):
    err = _openai_error(client.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_sdk_raises_bad_request_with_param(sdk):
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(model="default", messages=USER,
                                    response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": 5}})
    assert exc.value.param == "response_format.json_schema.schema" and exc.value.code == "INVALID_ARGUMENT"


def test_response_format_text_is_accepted(client):
    r = client.post("/v1/chat/completions", json={"messages": USER, "response_format": {"type": "text"}})
    assert r.status_code == 200, r.text


def test_body_errors_are_openai_shaped(client):
    err = _openai_error(client.post("/v1/chat/completions", content=b"{nope",
                                    headers={"content-type": "application/json"}), 400)
    assert err["param"] == "body"


# ---------------------------------------------------------------------------- models
def test_model_retrieve_by_listed_id(sdk):
    for listed in sdk.models.list().data:
        got = sdk.models.retrieve(listed.id)
        assert got.id == listed.id and got.object == "model"


def test_model_sources_add_ids(gateway, client):
    compat = gateway.app.state.gateway.openai

    class Source:
        async def list_models(self):
            return [{"id": "ft:tiny:x:job-1", "object": "model", "created": 1, "owned_by": "me"}]

        async def resolve(self, model_id):
            return "adapters/from-job-1" if model_id == "ft:tiny:x:job-1" else None

    compat.add_model_source(Source())
    try:
        assert "ft:tiny:x:job-1" in [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert client.get("/v1/models/ft:tiny:x:job-1").json()["owned_by"] == "me"
        r = client.post("/v1/chat/completions", json={"model": "ft:tiny:x:job-1", "messages": USER})
        assert r.status_code == 200 and "echo:x" in r.json()["choices"][0]["message"]["content"]
    finally:
        compat.model_sources.clear()


# ---------------------------------------------------------------------------- tools
def test_tool_calls_are_parsed_with_finish_reason(sdk):
    reply = sdk.chat.completions.create(model="default", tools=TOOLS,
                                        messages=[{"role": "user", "content": "Sure. " + CALL}])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Sure."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tools_reach_the_backend_and_a_tool_turn_is_sent_back(client):
    r = client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], "tools": TOOLS})
    body = r.json()
    assert r.status_code == 200, body
    assert body["usage"]["prompt_tokens"] == len(json.dumps(TOOLS))  # the fake counts tools_json
    assert body["choices"][0]["message"]["content"] == "sunny"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_tool_choice_none_sends_no_tools(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": CALL}],
                                                  "tools": TOOLS, "tool_choice": "none"})
    message = r.json()["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"].startswith("echo:<tool_call>")


def test_parallel_tool_calls_false_keeps_the_first(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": CALL + CALL}],
                                                  "tools": TOOLS, "parallel_tool_calls": False})
    assert len(r.json()["choices"][0]["message"]["tool_calls"]) == 1


def test_streamed_tool_calls(sdk):
    stream = sdk.chat.completions.create(model="default", tools=TOOLS, stream=True,
                                         messages=[{"role": "user", "content": "Hi <b> " + CALL}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hi <b> "
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_parsers_keep_text_that_is_not_a_call():
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])
    assert parse_tool_calls("plain") == ("plain", [])
    content, calls = parse_tool_calls(CALL)
    assert content is None and calls[0]["function"]["name"] == "get_weather"
    parser = ToolStreamParser()
    out = [d for piece in ("a <tool", "_ca", "x> b", "<tool_call>{bad}</tool_call>", "<tool_c") for d in parser.feed(piece)]
    out += parser.flush()
    assert "".join(d["content"] for d in out) == "a <tool_cax> b<tool_call>{bad}</tool_call><tool_c"
    assert parser.calls == 0


FORCED = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_choice_answers_one_call(sdk, choice):
    # The fake answers the last message as it is: the whole answer is the call's JSON.
    reply = sdk.chat.completions.create(model="default", tools=TOOLS, tool_choice=choice,
                                        messages=[{"role": "user", "content": FORCED}])
    choice_ = reply.choices[0]
    assert choice_.finish_reason == "tool_calls" and choice_.message.content is None
    assert choice_.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice_.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    chunks = list(sdk.chat.completions.create(model="default", tools=TOOLS, tool_choice=choice, stream=True,
                                              messages=[{"role": "user", "content": FORCED}]))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_forced_call_schema_is_the_functions_parameters():
    from gateway.openai_compat import forced_call_schema
    from gateway.openai_protocol import parse_chat_request

    named = parse_chat_request({"messages": USER, "tools": TOOLS,
                                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    schema = forced_call_schema(named)
    assert schema["properties"]["name"] == {"enum": ["get_weather"]}
    assert schema["properties"]["arguments"] == TOOLS[0]["function"]["parameters"]
    two = TOOLS + [{"type": "function", "function": {"name": "other"}}]
    schema = forced_call_schema(parse_chat_request({"messages": USER, "tools": two, "tool_choice": "required"}))
    assert schema["properties"]["name"] == {"enum": ["get_weather", "other"]}

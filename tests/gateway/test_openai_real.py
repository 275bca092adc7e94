"""The OpenAI surface against the REAL InferenceService (tiny model, in-process gRPC server on
a free port, real gateway): model ids a client can send back, tools rendered by a chat template
that takes them, and refused (naming `tools`) by one that ignores them."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

from services.inference.server import register
from tests.gateway.helpers import gateway_over
from tests.support import InProcessServer, make_config

# A Qwen/Hermes-style template that renders `tools` (the tiny model's own ignores them).
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}<|im_start|>{{ 'user' if message['role'] == 'tool' else message['role'] }}\n"
    "{%- if message['role'] == 'tool' %}<tool_response>{{ message['content'] }}</tool_response>"
    "{%- else %}{{ message['content'] }}{%- endif %}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
USER = [{"role": "user", "content": "weather in Paris?"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    ws = tmp_path_factory.mktemp("openai-real") / "ws"
    config = make_config(ws, tiny_model_dir, **{"inference.max_concurrent": 2})
    tools_model = ws / "models" / "tools-chat"
    shutil.copytree(tiny_model_dir, tools_model)
    (tools_model / "chat_template.jinja").write_text(TOOLS_TEMPLATE, encoding="utf-8")
    with InProcessServer(config, "inference", register) as inference, gateway_over(config, {"inference": inference}) as gw:
        yield gw, ws, tools_model


@pytest.fixture(scope="module")
def sdk(stack):
    return openai.OpenAI(base_url=f"{stack[0].url}/v1", api_key="x", max_retries=0, timeout=120)


def test_a_template_that_ignores_tools_is_refused_naming_tools(sdk):
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(model="default", messages=USER, tools=TOOLS, max_tokens=2)
    assert exc.value.param == "tools" and "does not render tools" in exc.value.message


def test_a_tool_message_needs_tools(sdk):
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(model="default", max_tokens=2,
                                    messages=[*USER, {"role": "tool", "tool_call_id": "c", "content": "sunny"}])
    assert exc.value.param == "messages[1].role"


def test_tools_are_rendered_by_a_template_that_takes_them(sdk, stack):
    _, ws, tools_model = stack
    model = str(tools_model)  # absolute, as a client may send it
    plain = sdk.chat.completions.create(model=model, messages=USER, max_tokens=2, temperature=0)
    with_tools = sdk.chat.completions.create(model=model, messages=USER, tools=TOOLS, max_tokens=2, temperature=0)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tools are in the prompt
    assert with_tools.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # A tool result sent back (the assistant's call rendered as the model writes calls).
    turn = sdk.chat.completions.create(model=model, tools=TOOLS, max_tokens=2, temperature=0, messages=[
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    assert turn.usage.prompt_tokens > with_tools.usage.prompt_tokens
    chunks = list(sdk.chat.completions.create(model=model, messages=USER, tools=TOOLS, max_tokens=3,
                                              temperature=0, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0] in (
        "stop", "length", "tool_calls")


def test_model_ids_are_workspace_relative_and_can_be_sent_back(sdk, stack):
    _, ws, tools_model = stack
    sdk.chat.completions.create(model=str(tools_model), messages=USER, max_tokens=1)
    ids = [m.id for m in sdk.models.list()]
    assert ids[0] == "default" and "models/tools-chat" in ids, ids
    assert not any(i.startswith("/") for i in ids), ids
    assert sdk.models.retrieve("models/tools-chat").id == "models/tools-chat"
    reply = sdk.chat.completions.create(model="models/tools-chat", messages=USER, max_tokens=1)
    assert reply.model == "models/tools-chat"
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.models.retrieve("models/nothing")
    assert exc.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as exc:
        sdk.chat.completions.create(model="models/nothing", messages=USER, max_tokens=1)
    assert exc.value.param == "model" and "models/nothing" in exc.value.message


def test_default_model_by_its_folder_name(stack, tiny_model_dir):
    gw = stack[0]
    r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=120,
                   json={"model": tiny_model_dir.name, "messages": USER, "max_tokens": 1})
    assert r.status_code == 200, r.text
    assert tiny_model_dir.name in [m["id"] for m in httpx.get(f"{gw.url}/v1/models").json()["data"]]


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
                 "required": ["answer", "sure"], "additionalProperties": False}


@pytest.mark.slow  # ~40 s on 2 shared cores: four constrained generations
def test_response_format_json_schema_constrains_the_answer(sdk):
    for stream in (False, True):
        kwargs = dict(model="default", messages=USER, max_tokens=48, temperature=0, response_format={
            "type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}})
        if stream:
            chunks = list(sdk.chat.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            reply = sdk.chat.completions.create(**kwargs)
            text = reply.choices[0].message.content
            assert reply.choices[0].finish_reason == "stop", text
        data = json.loads(text)  # the tiny model left alone writes no JSON at all
        assert set(data) == {"answer", "sure"} and data["answer"] in ("yes", "no") and isinstance(data["sure"], bool), text
    # Sampled, many rows of one batch: every answer still follows the schema.
    reply = sdk.chat.completions.create(model="default", messages=USER, max_tokens=48, temperature=1.0, seed=3, n=3,
                                        response_format={"type": "json_schema",
                                                         "json_schema": {"name": "a", "schema": ANSWER_SCHEMA}})
    for choice in reply.choices:
        if choice.finish_reason == "stop":
            assert json.loads(choice.message.content)["answer"] in ("yes", "no"), choice.message.content


def test_response_format_json_object_and_bad_schemas(sdk):
    reply = sdk.chat.completions.create(model="default", messages=USER, max_tokens=24, temperature=0,
                                        response_format={"type": "json_object"})
    text = reply.choices[0].message.content
    assert text.lstrip().startswith("{"), text
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    with pytest.raises(openai.BadRequestError) as exc:
        sdk.chat.completions.create(model="default", messages=USER, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
    assert exc.value.param == "response_format"


CITY_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}]


@pytest.mark.slow  # ~20 s on 2 shared cores
def test_a_named_tool_choice_is_honoured(sdk, stack):
    model = str(stack[2])
    reply = sdk.chat.completions.create(model=model, messages=USER, tools=CITY_TOOLS, max_tokens=160, temperature=0,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")

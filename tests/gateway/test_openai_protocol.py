"""The OpenAI routes' shapes are declared once (gateway.openai_protocol): the OpenAPI document
and the request mapping both come from there."""

from __future__ import annotations

from openapi_spec_validator import validate

from gateway.openai_compat import OPENAPI_PATHS, OPENAPI_SCHEMAS
from gateway.openai_protocol import PASS_THROUGH, ChatCompletionRequest
from wintrain.inference.v1 import inference_pb2


def _doc() -> dict:
    return {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": OPENAPI_PATHS,
            "components": {"schemas": OPENAPI_SCHEMAS}}


def test_openai_part_is_valid_openapi_and_declares_every_parameter():
    validate(_doc())
    props = OPENAPI_SCHEMAS["ChatCompletionRequest"]["properties"]
    for name in ("min_tokens", "repetition_penalty", "enable_thinking", "n", "max_completion_tokens",
                 "chat_template_kwargs", "stream_options", "top_k", "stop"):
        assert name in props, name
    assert OPENAPI_SCHEMAS["ChatCompletionRequest"]["required"] == ["messages"]
    # n > 1 is served (up to the server's inference.max_n); the sampling parameters are declared.
    assert props["n"]["minimum"] == 1
    assert props["top_logprobs"]["maximum"] == 20
    for name in ("frequency_penalty", "presence_penalty"):
        assert (props[name]["minimum"], props[name]["maximum"]) == (-2, 2), name
    assert "logprobs" in props and "logit_bias" in props


def test_pass_through_fields_exist_in_the_protocol_and_in_chat_request():
    chat_fields = set(inference_pb2.ChatRequest.DESCRIPTOR.fields_by_name)
    for name in PASS_THROUGH:
        assert name in ChatCompletionRequest.model_fields, name
        assert name in chat_fields, name

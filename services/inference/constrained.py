"""Constrained decoding for JSON answers (`ChatRequest.response_json_schema`): the answer must be
JSON that follows a JSON Schema (`{"type": "object"}` for OpenAI's `json_object`).

lm-format-enforcer's TokenEnforcer gives the tokens allowed after the text so far; the hook it
becomes runs on one row of the scheduler's batch (`SamplingParams.logits_hook`) and sets every
other token's logit to -inf, so sampling settings still apply among the allowed ones. The
model's end-of-turn tokens are allowed only where the JSON is complete. The per-tokenizer
preprocessing (a prefix tree of the vocabulary) is built once per tokenizer and reused.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from typing import Callable

from services.common.errors import InvalidArgument

log = logging.getLogger("wintrain.inference")

# JSON may not run on with whitespace: a weak model would otherwise fill max_tokens with it.
MAX_CONSECUTIVE_WHITESPACES = 2

_DATA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_DATA_LOCK = threading.Lock()


def parse_schema(text: str) -> dict:
    """The JSON Schema of `response_json_schema` (INVALID_ARGUMENT naming it when it is not one)."""
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument.for_field("response_json_schema", f"not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InvalidArgument.for_field("response_json_schema", "expected a JSON Schema object")
    try:
        import jsonschema
        from lmformatenforcer import JsonSchemaParser

        jsonschema.validators.validator_for(schema).check_schema(schema)
        JsonSchemaParser(schema).get_allowed_characters()
    except Exception as exc:  # noqa: BLE001 - the library's own schema errors vary
        raise InvalidArgument.for_field("response_json_schema", f"not a usable JSON Schema: {exc}") from None
    return schema


def _tokenizer_data(tokenizer, eos_ids: tuple[int, ...], vocab_size: int):
    from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data

    with _DATA_LOCK:
        cached = _DATA.get(tokenizer)
        if cached is None or cached.vocab_size != vocab_size:
            cached = build_token_enforcer_tokenizer_data(tokenizer, vocab_size=min(vocab_size, len(tokenizer)))
            cached.eos_token_id = list(eos_ids)  # the model's end-of-turn tokens end the JSON
            cached.vocab_size = vocab_size
            _DATA[tokenizer] = cached
        return cached


def json_logits_hook(schema: dict, loaded_of: Callable[[], object]) -> Callable:
    """A per-row logits hook forcing the answer to follow `schema`. `loaded_of()` gives the
    LoadedModel (tokenizer, eos_ids) when the first step runs (in the scheduler's thread)."""
    state: dict = {}

    def hook(generated_ids: list[int], logits):
        import torch
        from lmformatenforcer import CharacterLevelParserConfig, JsonSchemaParser, TokenEnforcer

        enforcer = state.get("enforcer")
        if enforcer is None:
            loaded = loaded_of()
            eos = tuple(loaded.eos_ids)
            data = _tokenizer_data(loaded.tokenizer, eos, int(logits.shape[0]))
            parser = JsonSchemaParser(schema)
            enforcer = state["enforcer"] = TokenEnforcer(data, parser)
            # TokenEnforcer gives the parser its own config (the tokenizer's alphabet): bound the
            # whitespace runs on that one.
            parser.config = CharacterLevelParserConfig(alphabet=data.tokenizer_alphabet,
                                                       max_consecutive_whitespaces=MAX_CONSECUTIVE_WHITESPACES)
            state["prefix"] = [eos[0]]  # a fixed stand-in for the prompt (never decoded)
        try:
            allowed = enforcer.get_allowed_tokens(state["prefix"] + list(generated_ids)).allowed_tokens
        except Exception:  # noqa: BLE001 - never fail the batch's other rows: end this one
            log.warning("constrained decoding failed; ending the answer", exc_info=True)
            allowed = list(state["prefix"])
        mask = torch.full_like(logits, float("-inf"))
        if allowed:
            mask[torch.tensor(allowed, dtype=torch.long, device=logits.device)] = 0
        return logits + mask

    return hook

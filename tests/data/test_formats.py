"""Unit tests of services.common.dataset.formats: detection and normalisation of the four formats,
and byte-exact serialisation."""

from __future__ import annotations

import json
import random

import pytest

from services.common.dataset.formats import (
    detect_row_format,
    dumps_conversation,
    fast_conversation_line,
    normalize_format_type,
    normalize_row,
)


def conv(*messages):
    return {"conversations": [{"role": r, "content": c} for r, c in messages]}


# ------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize("obj, fmt", [
    (conv(("user", "q"), ("assistant", "a")), "conversations"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "sharegpt"),
    ({"messages": [{"role": "user", "content": "q"}]}, "openai"),
    ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
    ({"instruction": "i"}, "alpaca"),
    ({"conversations": []}, "conversations"),
    ({"conversations": "x"}, "conversations"),
    ({"text": "x"}, "unknown"),
    ([1], "unknown"),
    ("x", "unknown"),
])
def test_detect_row_format(obj, fmt):
    assert detect_row_format(obj) == fmt


def test_normalize_format_type():
    assert normalize_format_type(None) == "auto"
    assert normalize_format_type("") == "auto"
    assert normalize_format_type(" ShareGPT ") == "sharegpt"
    assert normalize_format_type("messages") == "openai"
    with pytest.raises(ValueError, match="must be one of auto, conversations"):
        normalize_format_type("csv")


# ------------------------------------------------------------------------------------------
# Each format


def test_conversations_clean_row_is_unchanged():
    n = normalize_row(conv(("user", "你好"), ("assistant", "你好！")), "conversations")
    assert n.messages == [("user", "你好"), ("assistant", "你好！")]
    assert n.reason is None and n.repairs is None and not n.joined


def test_conversations_trim_nfc_and_role_aliases():
    n = normalize_row(conv(("System", "  be nice "), (" Human ", "cafe\u0301\n"),
                           ("GPT", "\u3000答案")), "conversations")
    assert n.messages == [("system", "be nice"), ("user", "caf\u00e9"), ("assistant", "答案")]
    assert n.repairs is None and not n.joined


def test_sharegpt():
    obj = {"system": "sys prompt",
           "conversations": [{"from": "human", "value": "问题"}, {"from": "gpt", "value": "回答"},
                             {"from": "human", "value": "q2"}, {"from": "chatgpt", "value": "a2"}]}
    n = normalize_row(obj, "sharegpt")
    assert n.messages == [("system", "sys prompt"), ("user", "问题"), ("assistant", "回答"),
                          ("user", "q2"), ("assistant", "a2")]
    inner_system = {"conversations": [{"from": "system", "value": "s"},
                                      {"from": "human", "value": "q"},
                                      {"from": "gpt", "value": "a"}]}
    assert normalize_row(inner_system, "sharegpt").messages[0] == ("system", "s")


def test_openai_with_content_parts():
    obj = {"messages": [{"role": "developer", "content": "rules"},
                        {"role": "user", "content": [{"type": "text", "text": "he"},
                                                     {"type": "text", "text": "llo"}]},
                        {"role": "assistant", "content": "hi"}]}
    n = normalize_row(obj, "openai")
    assert n.messages == [("system", "rules"), ("user", "hello"), ("assistant", "hi")]
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                          {"role": "assistant", "content": "x"}]}
    assert normalize_row(image, "openai").reason == "invalid_message"
    tool = {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]}
    assert normalize_row(tool, "openai").reason == "unknown_role"


def test_alpaca():
    n = normalize_row({"instruction": "翻译成英文", "input": "你好", "output": "Hello"}, "alpaca")
    assert n.messages == [("user", "翻译成英文\n你好"), ("assistant", "Hello")]
    assert n.joined
    n = normalize_row({"instruction": "Say hi", "output": "hi", "system": "s",
                       "history": [["q1", "a1"]]}, "alpaca")
    assert n.messages == [("system", "s"), ("user", "q1"), ("assistant", "a1"),
                          ("user", "Say hi"), ("assistant", "hi")]
    assert normalize_row({"instruction": "x", "output": 3}, "alpaca").reason == "invalid_message"
    assert normalize_row({"instruction": "x", "output": " "}, "alpaca").reason == \
        "no_complete_turn"


def test_format_mismatch_with_an_explicit_format():
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert normalize_row(sharegpt, "conversations").reason == "format_mismatch"
    assert normalize_row(conv(("user", "q"), ("assistant", "a")), "sharegpt").reason == \
        "format_mismatch"
    assert normalize_row({"instruction": "i", "output": "o"}, "openai").reason == \
        "format_mismatch"
    assert normalize_row({"text": "x"}, "conversations").reason == "format_mismatch"


# ------------------------------------------------------------------------------------------
# Repairs and drops


@pytest.mark.parametrize("messages, expected, repairs", [
    ([("user", "q"), ("assistant", "  "), ("user", "q2"), ("assistant", "a")],
     [("user", "q\n\nq2"), ("assistant", "a")],
     ["empty_message_removed", "consecutive_messages_merged"]),
    ([("assistant", "hello"), ("user", "q"), ("assistant", "a")],
     [("user", "q"), ("assistant", "a")], ["leading_assistant_removed"]),
    ([("user", "q"), ("assistant", "a"), ("user", "dangling")],
     [("user", "q"), ("assistant", "a")], ["trailing_user_removed"]),
    ([("system", "s1"), ("system", "s2"), ("user", "q"), ("assistant", "a")],
     [("system", "s1\n\ns2"), ("user", "q"), ("assistant", "a")], ["system_messages_merged"]),
])
def test_repairs(messages, expected, repairs):
    n = normalize_row(conv(*messages), "conversations")
    assert n.messages == expected
    assert n.repairs == repairs
    assert n.joined == any(r.endswith("_merged") for r in repairs)


@pytest.mark.parametrize("obj, reason", [
    ([1], "not_an_object"),
    ({"conversations": "x"}, "invalid_messages"),
    ({"conversations": ["x"]}, "invalid_message"),
    (conv(("user", 5), ("assistant", "a")), "invalid_message"),
    (conv(("robot", "q"), ("assistant", "a")), "unknown_role"),
    ({"conversations": [{"content": "q"}, {"role": "assistant", "content": "a"}]},
     "unknown_role"),
    (conv(("user", "q"), ("system", "s"), ("assistant", "a")), "misplaced_system"),
    (conv(("user", "q")), "no_complete_turn"),
    (conv(("user", " "), ("assistant", "")), "no_complete_turn"),
    (conv(("system", "s")), "no_complete_turn"),
    (conv(("assistant", "a")), "no_complete_turn"),
])
def test_unrepairable_rows(obj, reason):
    n = normalize_row(obj, "conversations")
    assert n.messages is None and n.reason == reason


def test_null_content_is_an_empty_message():
    obj = {"conversations": [{"role": "user", "content": "q"},
                             {"role": "assistant", "content": None},
                             {"role": "assistant", "content": "a"}]}
    n = normalize_row(obj, "conversations")
    assert n.messages == [("user", "q"), ("assistant", "a")]


# ------------------------------------------------------------------------------------------
# Serialisation is byte-exact with the original's json.dumps(..., ensure_ascii=False)


def test_dumps_matches_json_dumps_on_random_text():
    rnd = random.Random(7)
    alphabet = 'ab "\\/\n\r\t\b\f\x00\x1f\x7f中文，！\u2028\u00e9😀'
    for _ in range(500):
        msgs = [(rnd.choice(["user", "assistant", "system"]),
                 "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 20))))
                for _ in range(rnd.randrange(1, 5))]
        expected = json.dumps({"conversations": [{"role": r, "content": c} for r, c in msgs]},
                              ensure_ascii=False)
        assert dumps_conversation(msgs) == expected


def test_dumps_plain_matches_when_nothing_needs_escaping():
    msgs = [("user", "你好 world"), ("assistant", "好的！")]
    expected = json.dumps({"conversations": [{"role": r, "content": c} for r, c in msgs]},
                          ensure_ascii=False)
    assert dumps_conversation(msgs, plain=True) == expected == dumps_conversation(msgs)


def test_fast_line_agrees_with_normalize_and_dumps():
    rnd = random.Random(11)
    texts = ["q", " padded ", "", "  ", "e\u0301", '"quoted"', "a\\b", "line\nbreak", "中文",
             "\u3000全角\u3000", None, 5]
    roles = ["user", "assistant", "system", "User", "gpt", "bot?"]
    for _ in range(3000):
        msgs = [{"role": rnd.choice(roles), "content": rnd.choice(texts)}
                for _ in range(rnd.randrange(0, 6))]
        obj = {"conversations": msgs}
        fast = fast_conversation_line(obj, text_is_nfc=False, plain=False)
        if fast is None:
            continue  # the full path takes it; it may still repair the row
        norm = normalize_row(obj, "conversations")
        assert norm.messages is not None and norm.repairs is None and not norm.joined
        assert fast == dumps_conversation(norm.messages)

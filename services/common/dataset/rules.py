"""The row rules of the conversations format, in one place: `explain_row` lists every problem of
a parsed row. (The hot paths use formats.fast_conversation_line, which accepts exactly the rows
explain_row finds nothing wrong with.) Plain Python, no grpc."""

from __future__ import annotations

import json

from services.common.dataset.formats import detect_row_format, has_lone_surrogate


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quote(value: str, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > limit:
        text = text[: limit - 4] + '..."'
    return text


def explain_row(obj: object) -> list[tuple[str, str, str]]:
    """Every problem of one parsed row as `(field, code, description)`; empty when valid.

    Checks: an object; `conversations` a non-empty list; each message an object with string
    `role` and `content`; role `user`/`assistant`, or `system` as the first message only;
    content not blank and valid Unicode; turn order (after an optional system message: user
    first, alternating, assistant last)."""
    if not isinstance(obj, dict):
        return [("", "not_an_object", f"row must be a JSON object, got {_type_name(obj)}")]
    if "conversations" not in obj:
        hint = ""
        fmt = detect_row_format(obj)
        if fmt not in ("conversations", "unknown"):
            hint = f" (the row looks like the {fmt} format; ProcessDataset converts it)"
        return [("conversations", "missing_conversations", f'"conversations" is missing{hint}')]
    conv = obj["conversations"]
    if not isinstance(conv, list):
        return [("conversations", "invalid_conversations",
                 f"conversations must be a non-empty list, got {_type_name(conv)}")]
    if not conv:
        return [("conversations", "empty_conversations",
                 "conversations must be a non-empty list, got an empty list")]
    problems: list[tuple[str, str, str]] = []
    roles: list[str | None] = []
    sharegpt_hint = False
    for i, msg in enumerate(conv):
        path = f"conversations[{i}]"
        if not isinstance(msg, dict):
            problems.append((path, "invalid_message",
                             f"{path} must be an object, got {_type_name(msg)}"))
            roles.append(None)
            continue
        role = msg.get("role")
        good_role: str | None = None
        if "role" not in msg:
            if "from" in msg:
                sharegpt_hint = True
            problems.append((f"{path}.role", "missing_role", f"{path}.role is missing"))
        elif not isinstance(role, str):
            problems.append((f"{path}.role", "bad_role",
                             f"{path}.role must be a string, got {_type_name(role)}"))
        elif role == "system":
            if i == 0:
                good_role = role
            else:
                problems.append((f"{path}.role", "misplaced_system",
                                 f'{path}.role is "system", which is allowed only in the '
                                 f"first message"))
        elif role in ("user", "assistant"):
            good_role = role
        else:
            allowed = '"system", "user" or "assistant"' if i == 0 else '"user" or "assistant"'
            problems.append((f"{path}.role", "bad_role",
                             f"{path}.role must be {allowed}, got {_quote(role)}"))
        roles.append(good_role)
        if "content" not in msg:
            problems.append((f"{path}.content", "missing_content", f"{path}.content is missing"))
        else:
            content = msg["content"]
            if not isinstance(content, str):
                problems.append((f"{path}.content", "invalid_content",
                                 f"{path}.content must be a string, got {_type_name(content)}"))
            elif not content.strip():
                what = "empty" if not content else "blank (only whitespace)"
                problems.append((f"{path}.content", "empty_content", f"{path}.content is {what}"))
            elif has_lone_surrogate(content):
                problems.append((f"{path}.content", "invalid_unicode",
                                 f"{path}.content contains an unpaired surrogate escape "
                                 f"(\\ud800-\\udfff), which is not valid Unicode text"))
    if sharegpt_hint and problems:
        field_, code, desc = problems[0]
        problems[0] = (field_, code, desc + ' (messages use "from"/"value": the ShareGPT '
                       "format; ProcessDataset converts it)")
    if all(r is not None for r in roles):
        problems.extend(_explain_order(roles))  # order only means something with good roles
    return problems


def _explain_order(roles: list[str]) -> list[tuple[str, str, str]]:
    start = 1 if roles[0] == "system" else 0
    if start == len(roles):
        return [("conversations", "no_turns",
                 "conversations has only a system message; it needs a user message and an "
                 "assistant reply")]
    expect = "user"
    for i in range(start, len(roles)):
        if roles[i] != expect:
            path = f"conversations[{i}].role"
            why = ("a conversation starts with the user, after an optional system message"
                   if i == start else "turns alternate between user and assistant")
            return [(path, "bad_turn_order",
                     f'{path} must be "{expect}" ({why}), got "{roles[i]}"')]
        expect = "assistant" if expect == "user" else "user"
    if roles[-1] != "assistant":
        last = len(roles) - 1
        return [(f"conversations[{last}].role", "bad_turn_order",
                 f"a conversation must end with an assistant message; conversations[{last}] "
                 f'is "{roles[last]}"')]
    return []

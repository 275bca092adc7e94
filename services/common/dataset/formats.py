"""Dataset row formats: detect them and normalise any of them to the conversations format.

Formats (one per file):
- `conversations` (the original): `{"conversations": [{"role": "user", "content": "..."}, ...]}`
- `sharegpt`: `{"conversations": [{"from": "human", "value": "..."}, ...], "system"?: "..."}`
  with `from` in human / gpt / system
- `openai`: `{"messages": [{"role": "user", "content": "..."}, ...]}`; `content` may also be a
  list of `{"type": "text", "text": "..."}` parts
- `alpaca`: `{"instruction": "...", "input"?: "...", "output": "...", "system"?: "...",
  "history"?: [["question", "answer"], ...]}`

Normalisation gives a list of `(role, content)` pairs, or a stable reason why the row cannot
be repaired. Plain Python, no grpc.
"""

from __future__ import annotations

import unicodedata
from json.encoder import encode_basestring as _json_string

SFT_FORMATS = ("conversations", "sharegpt", "openai", "alpaca")
PREFERENCE_FORMATS = ("preference", "openai_preference")
FORMATS = SFT_FORMATS + PREFERENCE_FORMATS
FORMAT_CHOICES = ("auto",) + FORMATS

# Lower-case role names and what they mean. Anything else makes a row unrepairable.
ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bot": "assistant",
    "model": "assistant", "ai": "assistant",
    "system": "system", "developer": "system",
}

# Why a row was dropped (stable codes, the keys of ProcessReport.dropped).
DROP_REASONS = {
    "invalid_json": "not valid JSON",
    "truncated_json": "JSON cut off before the end of the row",
    "invalid_utf8": "bytes that are not UTF-8",
    "invalid_unicode": "an unpaired surrogate escape (\\ud800-\\udfff) in the text",
    "row_too_long": "over the row size limit",
    "not_an_object": "not a JSON object",
    "unknown_format": "matches no supported format",
    "format_mismatch": "not in the requested format_type",
    "invalid_messages": "messages missing or not a list",
    "invalid_message": "a message is not an object, or its content is not text",
    "unknown_role": "a role that is not user, assistant or system (or an alias)",
    "misplaced_system": "a system message after the first message",
    "no_complete_turn": "no user message followed by an assistant reply",
    # Preference rows (services.common.dataset.preference; a row is dropped for its first
    # problem).
    "missing_prompt": "no prompt",
    "invalid_prompt": "a prompt that is not text or a list of messages",
    "empty_prompt": "an empty prompt",
    "prompt_not_user_last": "a prompt that does not end with a user message",
    "missing_chosen": "no chosen completion",
    "missing_rejected": "no rejected completion",
    "invalid_completion": "a completion that is not text or a list of messages",
    "empty_completion": "an empty completion",
    "non_assistant_completion": "a completion message whose role is not assistant",
    "identical_completions": "chosen identical to rejected",
    "missing_input": "no input.messages (OpenAI preference format)",
    "missing_role": "a message without a role",
    "bad_role": "a message role that is not allowed there",
    "bad_turn_order": "prompt turns that do not alternate user / assistant",
    "missing_content": "a message without content",
    "invalid_content": "a message content that is not text",
}


def normalize_format_type(value: str | None) -> str:
    """`format_type` as given by a client -> one of FORMAT_CHOICES; "" and None mean auto.
    Raises ValueError for anything else."""
    name = (value or "auto").strip().lower()
    if name == "messages":
        name = "openai"
    if name not in FORMAT_CHOICES:
        raise ValueError(f"must be one of {', '.join(FORMAT_CHOICES)}, got {value!r}")
    return name


def detect_row_format(obj: object) -> str:
    """The format a parsed row is written in, or "unknown"."""
    if type(obj) is not dict:
        return "unknown"
    if "chosen" in obj or "rejected" in obj:
        return "preference"
    if "preferred_output" in obj or "non_preferred_output" in obj:
        return "openai_preference"
    conv = obj.get("conversations")
    if type(conv) is list:
        for msg in conv:
            if type(msg) is dict:
                if "role" in msg or "content" in msg:
                    return "conversations"
                if "from" in msg or "value" in msg:
                    return "sharegpt"
        return "conversations"
    if type(obj.get("messages")) is list:
        return "openai"
    if "instruction" in obj:
        return "alpaca"
    if "conversations" in obj:
        return "conversations"
    if "prompt" in obj and "completion" not in obj:
        return "preference"  # a pair without its completions: reported as such
    if type(obj.get("input")) is dict and "messages" in obj["input"]:
        return "openai_preference"
    return "unknown"


def _openai_content(content: object) -> str | None:
    """Text of an OpenAI content value (a string or a list of text parts); None if not text."""
    if type(content) is str:
        return content
    if content is None:
        return ""
    if type(content) is list:
        return openai_text_parts(content)
    return None


def openai_text_parts(parts: list, *, bare_strings: bool = True) -> str | None:
    """The texts of an OpenAI content-part list joined; None when a part is not text (a bare
    string counts as text only with `bare_strings`)."""
    texts = []
    for part in parts:
        if type(part) is str and bare_strings:
            texts.append(part)
        elif type(part) is dict and part.get("type", "text") == "text" \
                and type(part.get("text")) is str:
            texts.append(part["text"])
        else:
            return None
    return "".join(texts)


def has_lone_surrogate(text: str) -> bool:
    """True when `text` holds an unpaired surrogate (\\ud800-\\udfff): not valid Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class Normalized:
    """Result of `normalize_row`: `messages` (role, content) pairs, or a `reason` to drop the
    row; `repairs` names what was fixed (None when nothing was). `joined` is True when texts
    were joined with newlines (merged messages, Alpaca instruction + input), so the output may
    need JSON escapes the input did not have."""

    __slots__ = ("messages", "reason", "repairs", "joined")

    def __init__(self, messages, reason, repairs, joined):
        self.messages: list[tuple[str, str]] | None = messages
        self.reason: str | None = reason
        self.repairs: list[str] | None = repairs
        self.joined: bool = joined


def _drop(reason: str) -> Normalized:
    return Normalized(None, reason, None, False)


def _raw_messages(obj: dict, fmt: str) -> "list[tuple[object, object]] | str":
    """(role, content) pairs as written, for the formats that need mapping; or a reason."""
    if fmt == "sharegpt":
        conv = obj.get("conversations")
        if type(conv) is not list:
            return "invalid_messages"
        pairs: list[tuple[object, object]] = []
        system = obj.get("system")
        if type(system) is str and system.strip():
            pairs.append(("system", system))
        for msg in conv:
            if type(msg) is not dict:
                return "invalid_message"
            pairs.append((msg.get("from", msg.get("role")), msg.get("value", msg.get("content"))))
        return pairs
    if fmt == "openai":
        msgs = obj.get("messages")
        if type(msgs) is not list:
            return "invalid_messages"
        pairs = []
        for msg in msgs:
            if type(msg) is not dict:
                return "invalid_message"
            content = _openai_content(msg.get("content"))
            if content is None:
                return "invalid_message"
            pairs.append((msg.get("role"), content))
        return pairs
    if fmt == "alpaca":
        instruction = obj.get("instruction")
        output = obj.get("output")
        extra = obj.get("input", "")
        if type(instruction) is not str or type(output) is not str or \
                (extra is not None and type(extra) is not str):
            return "invalid_message"
        pairs = []
        system = obj.get("system")
        if type(system) is str and system.strip():
            pairs.append(("system", system))
        history = obj.get("history") or []
        if type(history) is not list:
            return "invalid_messages"
        for turn in history:
            if type(turn) is not list or len(turn) != 2 or \
                    not all(type(t) is str for t in turn):
                return "invalid_message"
            pairs.append(("user", turn[0]))
            pairs.append(("assistant", turn[1]))
        prompt = instruction.strip()
        if extra and extra.strip():
            prompt = f"{prompt}\n{extra.strip()}" if prompt else extra.strip()
        pairs.append(("user", prompt))
        pairs.append(("assistant", output))
        return pairs
    raise ValueError(f"unknown format {fmt!r}")


_CANONICAL_ROLES = frozenset(("user", "assistant", "system"))


def clean_conversation(obj: object, text_is_nfc: bool = False) -> list[tuple[str, str]] | None:
    """The fast path of `normalize_row` for the conversations format: the (role, content)
    pairs of a row whose roles are canonical, contents strings that are not blank, in a valid
    order (texts trimmed and NFC-normalised); None when the row needs the full treatment."""
    try:
        out: list[tuple[str, str]] = []
        for msg in obj["conversations"]:
            role = msg["role"]
            content = msg["content"]
            if role not in _CANONICAL_ROLES:
                return None
            if not text_is_nfc and not content.isascii():
                content = unicodedata.normalize("NFC", content)
            content = content.strip()
            if not content:
                return None
            out.append((role, content))
    except (KeyError, TypeError, AttributeError):
        return None
    n = len(out)
    start = 1 if n and out[0][0] == "system" else 0
    if n - start < 2 or (n - start) % 2:
        return None
    expect = "user"
    for i in range(start, n):
        if out[i][0] != expect:
            return None
        expect = "assistant" if expect == "user" else "user"
    return out


def normalize_row(obj: object, fmt: str, *, text_is_nfc: bool = False) -> Normalized:
    """Normalise one parsed row written in `fmt` (one of FORMATS) to conversation messages.

    Text is NFC-normalised (skipped when the caller promises `text_is_nfc`) and trimmed; role
    aliases are mapped; empty messages are dropped; consecutive messages of one role are merged
    (joined by a blank line); assistant messages before the first user message and a user
    message after the last reply are removed. A row that still has no user message followed by
    an assistant reply, or that has an unknown role or a system message after the first, is
    dropped with a reason from DROP_REASONS.
    """
    if type(obj) is not dict:
        return _drop("not_an_object")
    if fmt == "conversations":
        conv = obj.get("conversations")
        if type(conv) is not list:
            return _drop("invalid_messages" if "conversations" in obj else "format_mismatch")
        messages = clean_conversation(obj, text_is_nfc)
        if messages is not None:
            return Normalized(messages, None, None, False)
        pairs: list = conv
    else:
        if detect_row_format(obj) not in (fmt, "unknown"):
            return _drop("format_mismatch")
        raw = _raw_messages(obj, fmt)
        if type(raw) is str:
            return _drop(raw)
        pairs = raw
    return _normalize_messages(pairs, text_is_nfc, joined=fmt == "alpaca")


def _normalize_messages(pairs: list, text_is_nfc: bool, joined: bool) -> Normalized:
    repairs: list[str] | None = None
    out: list[tuple[str, str]] = []
    aliases = ROLE_ALIASES
    for item in pairs:
        if type(item) is tuple:
            role, content = item
        elif type(item) is dict:
            role = item.get("role")
            content = item.get("content")
            if role is None and "from" in item:
                return _drop("format_mismatch")  # a ShareGPT message in a conversations file
        else:
            return _drop("invalid_message")
        mapped = aliases.get(role) if type(role) is str else None
        if mapped is None:
            if type(role) is not str or aliases.get(role.strip().lower()) is None:
                return _drop("unknown_role")
            mapped = aliases[role.strip().lower()]
        if type(content) is not str:
            if content is None:
                content = ""
            else:
                return _drop("invalid_message")
        if not text_is_nfc and not content.isascii():
            content = unicodedata.normalize("NFC", content)
        text = content.strip()
        if not text:
            repairs = (repairs or []) + ["empty_message_removed"]
            continue
        out.append((mapped, text))
    return _repair_order(out, repairs, joined)


def _repair_order(msgs: list[tuple[str, str]], repairs: list[str] | None,
                  joined: bool) -> Normalized:
    # The usual case first: [system], user, assistant, ..., assistant.
    n = len(msgs)
    start = 1 if n and msgs[0][0] == "system" else 0
    if n - start >= 2 and (n - start) % 2 == 0:
        ok = True
        for i in range(start, n):
            if msgs[i][0] != ("user" if (i - start) % 2 == 0 else "assistant"):
                ok = False
                break
        if ok:
            return Normalized(msgs, None, repairs, joined)
    repairs = list(repairs or [])
    # Merge leading system messages, refuse later ones.
    system_parts = []
    while msgs and msgs[0][0] == "system":
        system_parts.append(msgs.pop(0)[1])
    if len(system_parts) > 1:
        repairs.append("system_messages_merged")
    if any(role == "system" for role, _ in msgs):
        return _drop("misplaced_system")
    merged: list[tuple[str, str]] = []
    for role, text in msgs:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + "\n\n" + text)
            if "consecutive_messages_merged" not in repairs:
                repairs.append("consecutive_messages_merged")
        else:
            merged.append((role, text))
    if merged and merged[0][0] == "assistant":
        merged.pop(0)
        repairs.append("leading_assistant_removed")
    if merged and merged[-1][0] == "user":
        merged.pop()
        repairs.append("trailing_user_removed")
    if not merged:
        return _drop("no_complete_turn")
    if system_parts:
        merged.insert(0, ("system", "\n\n".join(system_parts)))
    joined = joined or len(system_parts) > 1 or "consecutive_messages_merged" in repairs
    return Normalized(merged, None, repairs or None, joined)


_MESSAGE_HEAD = {role: f'{{"role": "{role}", "content": ' for role in _CANONICAL_ROLES}


def fast_conversation_line(obj: object, text_is_nfc: bool, plain: bool) -> str | None:
    """`dumps_conversation(clean_conversation(obj))` in one pass, the hot path of
    ProcessDataset; None when the row needs `normalize_row`. `plain` as in dumps_conversation."""
    try:
        parts = ['{"conversations": [']
        expect = "user"
        first = True
        conv = obj["conversations"]
        for msg in conv:
            role = msg["role"]
            content = msg["content"]
            if role != expect:
                if not (first and role == "system"):
                    return None
            else:
                expect = "assistant" if expect == "user" else "user"
            first = False
            if not text_is_nfc and not content.isascii():
                content = unicodedata.normalize("NFC", content)
            content = content.strip()
            if not content:
                return None
            if plain:
                parts += (_MESSAGE_HEAD[role], '"', content, '"}, ')
            else:
                parts += (_MESSAGE_HEAD[role], _json_string(content), "}, ")
    except (KeyError, TypeError, AttributeError):
        return None
    if expect != "user" or len(conv) < 2:  # must end with a reply; a lone system is no turn
        return None
    parts[-1] = '"}]}' if plain else "}]}"
    return "".join(parts)


def dumps_conversation(messages: list[tuple[str, str]], plain: bool = False) -> str:
    """The row exactly as the original wrote it: `json.dumps({"conversations": [...]},
    ensure_ascii=False)`. `plain=True` promises no content needs JSON escaping (no `"`, `\\`
    or control characters), which skips the escaping scan."""
    if plain:
        body = ", ".join(['{"role": "%s", "content": "%s"}' % m for m in messages])
    else:
        body = ", ".join([f'{{"role": "{role}", "content": {_json_string(text)}}}'
                          for role, text in messages])
    return f'{{"conversations": [{body}]}}'

"""Preference pairs: the one definition of what a valid preference row is, and its canonical shape.

Two row formats are read (detected per row by `formats.detect_row_format`):

- `preference` (TRL's): `{"prompt": ..., "chosen": ..., "rejected": ...}`, each either a string
  (standard) or a list of `{"role", "content"}` messages (conversational); the two may mix;
- `openai_preference` (OpenAI's DPO fine-tuning file): `{"input": {"messages": [...]},
  "preferred_output": [...], "non_preferred_output": [...]}`; contents may be strings or lists
  of text parts, `developer` means `system`.

`check_pair` is used by ValidateDataset (every problem, with its field path), ProcessDataset
(a row with a problem is dropped, counted by its first problem's code), pre-flight and the eval
service, so the rules are written once. A valid row becomes the canonical shape, TRL's
conversational preference row:

    {"prompt": [{"role": "system"?...}, {"role": "user", "content": "..."}, ... ending with
     a user message], "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}]}

Texts are NFC-normalised and trimmed; a completion written as several assistant messages is
joined into one (a blank line between). Plain Python, no grpc.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from services.common.dataset.formats import (PREFERENCE_FORMATS, detect_row_format, has_lone_surrogate,
                                             openai_text_parts)

# Problem codes (with descriptions) are formats.DROP_REASONS: ProcessDataset drops a bad row
# for its first problem.

_PROMPT_ROLES = {"system": "system", "developer": "system", "user": "user",
                 "assistant": "assistant"}

Problem = tuple[str, str, str]  # (field path, code, description), as rules.explain_row


@dataclass(frozen=True)
class Fields:
    """Where a format keeps the three parts (as written in field paths)."""

    prompt: str
    chosen: str
    rejected: str


_FIELDS = {
    "preference": Fields("prompt", "chosen", "rejected"),
    "openai_preference": Fields("input.messages", "preferred_output", "non_preferred_output"),
}


def _type_name(value: object) -> str:
    from services.common.dataset.rules import _type_name as name

    return name(value)


def _text(value: object, text_is_nfc: bool) -> str:
    if not text_is_nfc and not value.isascii():
        value = unicodedata.normalize("NFC", value)
    return value.strip()


def _content(msg: dict, openai: bool) -> "str | None | bool":
    """The text of a message's content; None when missing, False when not text."""
    if "content" not in msg:
        return None
    content = msg["content"]
    if type(content) is str:
        return content
    if openai and type(content) is list:
        text = openai_text_parts(content, bare_strings=False)
        return False if text is None else text
    return False


def _messages(value: list, path: str, problems: list[Problem], *, prompt: bool, openai: bool,
              text_is_nfc: bool) -> list[dict]:
    """Check a message list (a prompt, or a completion when not `prompt`); the cleaned
    messages (only meaningful when no problem was added)."""
    out: list[dict] = []
    empty_code = "empty_prompt" if prompt else "empty_completion"
    for i, msg in enumerate(value):
        where = f"{path}[{i}]"
        if type(msg) is not dict:
            problems.append((where, "invalid_prompt" if prompt else "invalid_completion",
                             f"{where} must be an object, got {_type_name(msg)}"))
            continue
        role = msg.get("role")
        if "role" not in msg:
            problems.append((f"{where}.role", "missing_role", f"{where}.role is missing"))
            role = None
        elif type(role) is not str:
            problems.append((f"{where}.role", "bad_role",
                             f"{where}.role must be a string, got {_type_name(role)}"))
            role = None
        elif prompt:
            mapped = _PROMPT_ROLES.get(role) if openai or role != "developer" else None
            if mapped is None:
                problems.append((f"{where}.role", "bad_role",
                                 f'{where}.role must be "system", "user" or "assistant", got '
                                 f"{json.dumps(role, ensure_ascii=False)[:40]}"))
            elif mapped == "system" and i > 0:
                problems.append((f"{where}.role", "misplaced_system",
                                 f'{where}.role is "{role}", which is allowed only in the first '
                                 f"message"))
            role = mapped
        elif role != "assistant":
            problems.append((f"{where}.role", "non_assistant_completion",
                             f'{where}.role must be "assistant" (a completion is the model\'s '
                             f"reply), got {json.dumps(role, ensure_ascii=False)[:40]}"))
            role = None
        content = _content(msg, openai)
        if content is None:
            problems.append((f"{where}.content", "missing_content", f"{where}.content is missing"))
        elif content is False:
            problems.append((f"{where}.content", "invalid_content",
                             f"{where}.content must be a string, got "
                             f"{_type_name(msg['content'])}"))
        elif not content.strip():
            problems.append((f"{where}.content", empty_code,
                             f"{where}.content is {'empty' if not content else 'blank'}"))
        elif has_lone_surrogate(content):
            problems.append((f"{where}.content", "invalid_unicode",
                             f"{where}.content contains an unpaired surrogate escape "
                             f"(\\ud800-\\udfff), which is not valid Unicode text"))
        elif role is not None:
            out.append({"role": role, "content": _text(content, text_is_nfc)})
    return out


def _prompt(value: object, path: str, problems: list[Problem], openai: bool,
            text_is_nfc: bool) -> list[dict]:
    if type(value) is str:
        if not value.strip():
            problems.append((path, "empty_prompt", f"{path} is {'empty' if not value else 'blank'}"))
            return []
        if has_lone_surrogate(value):
            problems.append((path, "invalid_unicode", f"{path} contains an unpaired surrogate "
                                                      "escape, which is not valid Unicode text"))
            return []
        return [{"role": "user", "content": _text(value, text_is_nfc)}]
    if type(value) is not list:
        what = "a list of messages" if openai else "a string or a list of messages"
        problems.append((path, "invalid_prompt", f"{path} must be {what}, got {_type_name(value)}"))
        return []
    if not value:
        problems.append((path, "empty_prompt", f"{path} is an empty list"))
        return []
    before = len(problems)
    msgs = _messages(value, path, problems, prompt=True, openai=openai, text_is_nfc=text_is_nfc)
    if len(problems) > before:
        return msgs
    start = 1 if msgs[0]["role"] == "system" else 0
    if start == len(msgs):
        problems.append((path, "prompt_not_user_last",
                         f"{path} has only a system message; a prompt must end with a user "
                         "message"))
        return msgs
    expect = "user"
    for i in range(start, len(msgs)):
        if msgs[i]["role"] != expect:
            where = f"{path}[{i}].role"
            why = ("a prompt starts with the user, after an optional system message"
                   if i == start else "turns alternate between user and assistant")
            problems.append((where, "bad_turn_order",
                             f'{where} must be "{expect}" ({why}), got "{msgs[i]["role"]}"'))
            return msgs
        expect = "assistant" if expect == "user" else "user"
    if msgs[-1]["role"] != "user":
        last = len(msgs) - 1
        problems.append((f"{path}[{last}].role", "prompt_not_user_last",
                         f"a prompt must end with a user message (the completions answer it); "
                         f'{path}[{last}] is "{msgs[last]["role"]}"'))
    return msgs


def _completion(obj: dict, key: str, side: str, problems: list[Problem], openai: bool,
                text_is_nfc: bool) -> str | None:
    """The completion's text (several assistant messages joined), or None after a problem."""
    if key not in obj or obj[key] is None:
        problems.append((key, f"missing_{side}", f"{key} is missing"))
        return None
    value = obj[key]
    if type(value) is str and not openai:
        if not value.strip():
            problems.append((key, "empty_completion",
                             f"{key} is {'empty' if not value else 'blank'}"))
            return None
        if has_lone_surrogate(value):
            problems.append((key, "invalid_unicode", f"{key} contains an unpaired surrogate "
                                                     "escape, which is not valid Unicode text"))
            return None
        return _text(value, text_is_nfc)
    if type(value) is not list:
        what = "a list of assistant messages" if openai else \
            "a string or a list of assistant messages"
        problems.append((key, "invalid_completion", f"{key} must be {what}, got "
                                                    f"{_type_name(value)}"))
        return None
    if not value:
        problems.append((key, "empty_completion", f"{key} is an empty list"))
        return None
    before = len(problems)
    msgs = _messages(value, key, problems, prompt=False, openai=openai, text_is_nfc=text_is_nfc)
    if len(problems) > before:
        return None
    return "\n\n".join(m["content"] for m in msgs)


def check_pair(obj: object, fmt: str, *, text_is_nfc: bool = False
               ) -> tuple[dict | None, list[Problem]]:
    """Check one parsed row written in `fmt` (one of PREFERENCE_FORMATS): its canonical row
    (see the module) and no problems, or None and every problem as `(field path, code,
    description)`. Codes: those of formats.DROP_REASONS (the preference block, and
    misplaced_system / invalid_unicode as rules.explain_row has them)."""
    if type(obj) is not dict:
        return None, [("", "not_an_object", f"row must be a JSON object, got {_type_name(obj)}")]
    openai = fmt == "openai_preference"
    names = _FIELDS[fmt]
    problems: list[Problem] = []
    if openai:
        inp = obj.get("input")
        if type(inp) is not dict or "messages" not in inp:
            if "input" not in obj:
                problems.append(("input", "missing_input", "input is missing"))
            elif type(inp) is not dict:
                problems.append(("input", "missing_input",
                                 f"input must be an object with messages, got {_type_name(inp)}"))
            else:
                problems.append(("input.messages", "missing_input", "input.messages is missing"))
            prompt: list[dict] = []
        else:
            prompt = _prompt(inp["messages"], names.prompt, problems, True, text_is_nfc)
    elif "prompt" not in obj:
        problems.append(("prompt", "missing_prompt",
                         "prompt is missing (rows whose chosen and rejected repeat the prompt, "
                         "TRL's implicit-prompt form, are not read: move the shared turns into "
                         "prompt)"))
        prompt = []
    else:
        prompt = _prompt(obj["prompt"], "prompt", problems, False, text_is_nfc)
    chosen = _completion(obj, names.chosen, "chosen", problems, openai, text_is_nfc)
    rejected = _completion(obj, names.rejected, "rejected", problems, openai, text_is_nfc)
    if chosen is not None and rejected is not None and chosen == rejected:
        problems.append((names.rejected, "identical_completions",
                         f"{names.rejected} is identical to {names.chosen}; a preference pair "
                         "needs two different completions"))
    if problems:
        return None, problems
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}, []


def dumps_pair(pair: dict) -> str:
    """The canonical row as one JSONL line (what ProcessDataset writes and duplicates are
    judged on: the whole pair)."""
    return json.dumps(pair, ensure_ascii=False)


def prompt_key(pair: dict) -> str:
    """What pairs of one prompt share (ProcessDataset keeps them in one split)."""
    return json.dumps(pair["prompt"], ensure_ascii=False)


def pair_key(obj: object) -> "bytes | None":
    """The duplicate key of a valid preference row (its canonical line as bytes); None when
    the row is not one."""
    fmt = detect_row_format(obj)
    if fmt not in PREFERENCE_FORMATS:
        return None
    pair, problems = check_pair(obj, fmt)
    if pair is None:
        return None
    return dumps_pair(pair).encode("utf-8")


@dataclass(frozen=True)
class PreferenceRow:
    """One valid pair of a file, canonical (see the module); `number` its 1-based line (JSONL)
    or element (JSON array)."""

    number: int
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]

    def as_trl(self) -> dict:
        """The row as TRL's conversational preference example."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def read_preference_rows(path: Path, *, field: str = "dataset_path",
                         max_row_bytes: int | None = None, limit: int = 0
                         ) -> list[PreferenceRow]:
    """Every pair of a preference file (either format, canonical), at most `limit` (0: all).

    The file is checked first (`validate_rows_for_training(kind="preference")`): raises
    InvalidArgument naming `field` when it is not preference data or any row is bad (the
    message lists the first lines with field and reason), NotFound / PermissionDenied as
    validate_file."""
    from services.common.dataset.reader import DEFAULT_MAX_ROW_BYTES, RowReader, parse_row
    from services.common.dataset.validate import validate_rows_for_training

    max_row_bytes = max_row_bytes or DEFAULT_MAX_ROW_BYTES
    validate_rows_for_training(path, max_row_bytes=max_row_bytes, field=field, kind="preference")
    rows: list[PreferenceRow] = []
    for number, raw in RowReader(path, max_row_bytes=max_row_bytes):
        obj = parse_row(raw.decode("utf-8"))
        pair, _ = check_pair(obj, detect_row_format(obj))
        rows.append(PreferenceRow(number, pair["prompt"], pair["chosen"], pair["rejected"]))
        if limit and len(rows) >= limit:
            break
    return rows

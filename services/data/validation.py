"""Dataset validation: streams a dataset file and checks every row of the conversations format.

A row is `{"conversations": [{"role": "user", "content": "..."}, ...]}`. The file is JSONL (one
row per line, whatever its extension) or one JSON array of rows; both are read as a stream, so
memory stays flat whatever the file size. Rows are read as bytes and decoded one at a time, so a
bad byte, a truncated last line or an oversized line is one row error, never a crash.

This module is plain Python (no grpc): the data servicer and the training service both call
`validate_file`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from json import scanner as _json_scanner
from pathlib import Path
from typing import Callable, Iterator

from services.common.dataset import dedupe
from services.common.proc import die_with_parent
from services.common.errors import Cancelled, InvalidArgument, NotFound, PermissionDenied
from services.common.dataset.formats import detect_row_format

DEFAULT_MAX_ROW_BYTES = 1 << 20
DEFAULT_MAX_ERRORS = 50
# A row with many problems lists only its first few, so one bad row cannot hide the others.
MAX_ISSUES_PER_ROW = 5

_READ_CHUNK = 1 << 20
_SNIFF_BYTES = 1 << 16
_BOM = b"\xef\xbb\xbf"
_FOLD_EVERY = 1 << 16


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class DatasetIssue:
    """One problem in one row. `line` is the 1-based line (JSONL) or row index (JSON array);
    0 for a problem of the whole file."""

    line: int
    field: str
    code: str
    message: str


@dataclass
class LengthStats:
    """Percentiles of a distribution (nearest-rank), all 0 when there is no data."""

    min: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    mean: float = 0.0

    @classmethod
    def from_counts(cls, counts: dict[int, int]) -> "LengthStats":
        """Build from a histogram `{value: how many times}`; exact, in memory bounded by the
        number of distinct values."""
        total = sum(counts.values())
        if not total:
            return cls()
        values = sorted(counts)
        wanted = {q: max(1, -(-q * total // 100)) for q in (50, 90, 99)}  # ceil(q% of n)
        found: dict[int, int] = {}
        running = 0
        for value in values:
            running += counts[value]
            for q, rank in wanted.items():
                if q not in found and running >= rank:
                    found[q] = value
        mean = sum(v * c for v, c in counts.items()) / total
        return cls(float(values[0]), float(found[50]), float(found[90]), float(found[99]),
                   float(values[-1]), mean)


@dataclass
class DatasetStats:
    """Statistics over the valid rows."""

    messages_per_role: dict[str, int] = field(default_factory=dict)
    turns: LengthStats = field(default_factory=LengthStats)  # messages per conversation
    chars: LengthStats = field(default_factory=LengthStats)  # content characters per conversation
    exact_duplicates: int = 0  # valid rows whose text repeats an earlier valid row exactly


@dataclass
class ValidationReport:
    """Result of `validate_file`. The first five fields are the original API's."""

    is_valid: bool
    total_samples: int
    valid_samples: int
    invalid_samples: int
    error_messages: list[str]
    issues: list[DatasetIssue]
    stats: DatasetStats
    errors_truncated: bool
    detected_format: str
    # Every problem found, by code (not only the listed ones).
    issue_counts: dict[str, int] = field(default_factory=dict)
    # "jsonl" or "json_array".
    file_kind: str = "jsonl"


# ---------------------------------------------------------------------------------------------
# Reading rows


@dataclass(frozen=True)
class RowError:
    """A row that cannot be checked: over the size limit, not UTF-8, or not JSON. `code` is
    stable (row_too_long, invalid_utf8, invalid_json, truncated_json)."""

    code: str
    field: str
    detail: str


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# The C scanner parses one value at an index without json.loads' extra work:
# scan_json(text, 0) -> (value, end). NaN/Infinity are rejected: they are not JSON and no
# trainer's loader accepts them.
scan_json = _json_scanner.make_scanner(json.JSONDecoder(parse_constant=_reject_constant))
_WS = " \t\r\n"
JSON_WHITESPACE = b" \t\r\n"


def check_input_file(path: Path, *, field: str = "file_path") -> int:
    """Check that `path` is a non-empty regular file and return its size.

    Raises NotFound (missing), InvalidArgument (a directory, not a regular file, empty),
    PermissionDenied (not readable)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{field}: {path} does not exist", [(field, "does not exist")]) from None
    except PermissionError:
        raise PermissionDenied(f"{field}: {path} cannot be read (permission denied)",
                               [(field, "permission denied")]) from None
    except NotADirectoryError:
        raise NotFound(f"{field}: {path} does not exist", [(field, "does not exist")]) from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument.for_field(field, f"{path} is a directory, expected a dataset file")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument.for_field(field, f"{path} is not a regular file")
    if st.st_size == 0:
        raise InvalidArgument.for_field(field, f"{path} is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise PermissionDenied(f"{field}: {path} cannot be read (permission denied)",
                               [(field, "permission denied")])
    return st.st_size


class RowReader:
    """Reads the rows of a dataset file, JSONL or one JSON array, in bounded memory.

    `blocks()` is the fast interface: lists of entries, one per JSONL line (blank lines
    included, as blank bytes, so a consumer counting entries knows each line number) or per
    array element; an entry is the row's raw bytes (without the newline, maybe with a "\r") or
    a RowError for a row over `max_row_bytes`, which is never held in memory. Iterating the
    reader gives `(number, stripped bytes | RowError)` for non-blank rows.

    `number` is the 1-based line (JSONL) or element index (JSON array); `label` says which.
    After reading, `file_issues` holds problems of the file as a whole (an unclosed array,
    data after it).
    """

    def __init__(self, path: Path, *, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES):
        if max_row_bytes < 1:
            raise ValueError("max_row_bytes must be positive")
        self.path = path
        self.max_row_bytes = max_row_bytes
        self.file_issues: list[DatasetIssue] = []
        self.kind = "jsonl"
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
        self._bom = head.startswith(_BOM)
        if self._bom:
            head = head[len(_BOM):]
        if head.lstrip(JSON_WHITESPACE)[:1] == b"[":
            self.kind = "json_array"

    @property
    def label(self) -> str:
        return "row" if self.kind == "json_array" else "line"

    def too_long(self, size: int) -> RowError:
        return RowError("row_too_long", "",
                        f"row is {size} bytes, over the {self.max_row_bytes}-byte limit")

    def __iter__(self) -> Iterator[tuple[int, "bytes | RowError"]]:
        number = 0
        limit = self.max_row_bytes
        for block in self.blocks():
            for raw in block:
                number += 1
                if type(raw) is bytes:
                    raw = raw.rstrip(JSON_WHITESPACE)
                    if not raw:
                        continue
                    if len(raw) > limit:
                        raw = self.too_long(len(raw))
                yield number, raw

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[list]:
        """Entries in blocks (see the class). `start` / `end` (JSONL only) read the lines
        that start in that byte range; `start` must be 0 or the start of a line."""
        if self.kind == "json_array":
            return self._array_blocks()
        return self._jsonl_blocks(start, end)

    def _jsonl_blocks(self, start: int, end: int | None) -> Iterator[list]:
        limit = self.max_row_bytes + 1  # room for a "\r"
        with open(self.path, "rb", buffering=0) as f:
            if start == 0 and self._bom:
                start = len(_BOM)
            f.seek(start)
            remaining = None if end is None else end - start
            carry = b""
            skipped = 0  # > 0: inside a line over the limit, its bytes so far
            while True:
                size = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
                chunk = f.read(size) if size > 0 else b""
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                out: list = []
                if skipped:
                    newline = chunk.find(b"\n")
                    if newline < 0:
                        skipped += len(chunk)
                        continue
                    out.append(self.too_long(skipped + newline))
                    skipped = 0
                    chunk = chunk[newline + 1:]
                lines = (carry + chunk).split(b"\n") if carry else chunk.split(b"\n")
                carry = lines.pop()
                if len(carry) > limit:  # a line over the limit: stop holding it
                    skipped, carry = len(carry), b""
                if out:
                    out.extend(lines)
                    lines = out
                if lines:
                    yield lines
            if skipped:
                yield [self.too_long(skipped)]
            elif carry:
                yield [carry]

    def _array_blocks(self) -> Iterator[list]:
        splitter = _ArraySplitter(self.max_row_bytes)
        with open(self.path, "rb", buffering=0) as f:
            if self._bom:
                f.seek(len(_BOM))
            while True:
                chunk = f.read(_READ_CHUNK)
                if not chunk:
                    break
                block = [self._element(e) for e in splitter.feed(chunk)]
                if block:
                    yield block
            block = [self._element(e) for e in splitter.finish()]
            if block:
                yield block
        self.file_issues.extend(splitter.issues)

    def _element(self, element: "bytes | int") -> "bytes | RowError":
        if type(element) is int:
            return self.too_long(element)
        if not element:
            return RowError("invalid_json", "", "invalid JSON: the row is empty (a comma too "
                                                "many?)")
        return element


def bad_utf8(raw: bytes, exc: UnicodeDecodeError) -> RowError:
    """The RowError for a row whose bytes do not decode."""
    bad = raw[exc.start:exc.end]
    return RowError("invalid_utf8", "",
                    f"text is not valid UTF-8: byte {exc.start + 1} (0x{bad.hex()}) "
                    f"{exc.reason}")


# Inside or outside a JSON string, the only bytes that matter for finding where an element ends.
_STRUCTURAL = re.compile(rb'["\[\]{},]')
_STRING_STOP = re.compile(rb'["\\]')


class _ArraySplitter:
    """Splits a streamed top-level JSON array into its elements' raw bytes without parsing
    them, so each element is decoded and checked like a JSONL line (and a broken element is
    one row error; the next one is still found). An element over `max_row_bytes` is yielded
    as its size (an int) and never held in memory."""

    def __init__(self, max_row_bytes: int):
        self.max_row_bytes = max_row_bytes
        self.issues: list[DatasetIssue] = []
        self.index = 0  # 1-based index of the element last yielded
        self._buf = b""
        self._pos = 0  # scan position in _buf; may pass its end by one after a backslash
        self._state = "start"  # start, before_value, in_value, after_value, closed
        self._depth = 0
        self._in_string = False
        self._start = 0  # offset in _buf of the element being read
        self._dropped = 0  # bytes of an oversized element already discarded

    def feed(self, chunk: bytes) -> Iterator["bytes | int"]:
        self._buf += chunk
        yield from self._drain()
        # Keep memory bounded: drop what is consumed; of an oversized element keep nothing.
        n = len(self._buf)
        if self._state != "in_value":
            cut = min(self._pos, n)
        elif self._dropped or n - self._start > self.max_row_bytes:
            self._dropped += n - self._start
            cut = n
        else:
            cut = self._start
        if cut:
            self._buf = self._buf[cut:]
            self._pos -= cut
            self._start = max(0, self._start - cut)

    def finish(self) -> Iterator["bytes | int"]:
        if self._state == "in_value":
            # The file ends inside an element (or right after one, without "]"): the last row.
            self.index += 1
            if self._dropped:
                yield self._dropped + len(self._buf) - self._start
            else:
                yield self._buf[self._start:].strip(JSON_WHITESPACE)
        if self._state not in ("start", "closed", "trailing"):
            self.issues.append(DatasetIssue(
                0, "", "unterminated_array",
                'the JSON array is not closed: the file ends before its final "]"'))

    def _emit(self, end: int) -> "bytes | int":
        self.index += 1
        if self._dropped:
            size = self._dropped + end - self._start
            self._dropped = 0
            return size
        return self._buf[self._start:end].strip(JSON_WHITESPACE)

    def _drain(self) -> Iterator["bytes | int"]:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        while pos < n:
            state = self._state
            if state != "in_value":
                while pos < n and buf[pos] in JSON_WHITESPACE:
                    pos += 1
                if pos >= n:
                    break
                c = buf[pos]
                if state == "start":  # the reader saw "[" first
                    self._state = "before_value"
                    pos += 1
                elif state == "closed":
                    self.issues.append(DatasetIssue(
                        0, "", "trailing_data",
                        f'unexpected data after the JSON array\'s closing "]" '
                        f"(after row {self.index})"))
                    self._state = "trailing"
                    pos = n
                elif state == "trailing":
                    pos = n
                elif c == 0x5D and state == "before_value":  # "]"
                    if self.index:
                        self.issues.append(DatasetIssue(
                            0, "", "trailing_comma",
                            f'the JSON array has a comma after its last row (row {self.index}) '
                            f'before "]"'))
                    self._state = "closed"
                    pos += 1
                elif c == 0x2C and state == "after_value":  # ","
                    self._state = "before_value"
                    pos += 1
                elif c == 0x5D and state == "after_value":
                    self._state = "closed"
                    pos += 1
                else:  # a value starts (after a missing comma too: it becomes a broken row)
                    self._state = "in_value"
                    self._start = pos
                    self._depth = 0
                continue
            if self._in_string:
                m = _STRING_STOP.search(buf, pos)
                if m is None:
                    pos = n
                    break
                p = m.start()
                if buf[p] == 0x5C:  # backslash: the next byte is escaped
                    pos = p + 2
                else:
                    pos = p + 1
                    self._in_string = False
                continue
            m = _STRUCTURAL.search(buf, pos)
            if m is None:
                pos = n
                break
            p = m.start()
            c = buf[p]
            pos = p + 1
            if c == 0x22:
                self._in_string = True
            elif c == 0x5B or c == 0x7B:
                self._depth += 1
            elif c == 0x5D or c == 0x7D:
                if self._depth:
                    self._depth -= 1
                elif c == 0x5D:  # the array's own "]"
                    yield self._emit(p)
                    self._state = "closed"
                # a stray "}" at depth 0 stays in the element, which then fails to parse
            elif not self._depth:  # "," ending the element
                yield self._emit(p)
                self._state = "before_value"
        self._pos = pos


# ---------------------------------------------------------------------------------------------
# Row checks


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


def parse_row(text: str) -> "object | RowError":
    """Parse one row's JSON text; a RowError (`invalid_json` / `truncated_json`) when it is
    not exactly one JSON value."""
    try:
        obj, end = scan_json(text, 0)
        if end == len(text):
            return obj
    except (StopIteration, ValueError, RecursionError):
        pass
    return explain_json(text)


def explain_json(text: str) -> "object | RowError":
    """The slow path of parsing one row: json.loads semantics (whitespace around the value
    allowed); the value, or a RowError with a precise message."""
    body = text.strip(_WS)
    if not body:
        return RowError("invalid_json", "", "invalid JSON: the row is blank")
    try:
        obj, end = scan_json(body, 0)
    except StopIteration as stop:  # no value where one must start
        pos = stop.value if isinstance(stop.value, int) else 0
        if pos >= len(body):
            return RowError("truncated_json", "",
                            "invalid JSON: the row ends before its JSON value is complete "
                            f"(expecting value, column {pos + 1}); was it truncated?")
        return RowError("invalid_json", "", f"invalid JSON: Expecting value at column {pos + 1}")
    except RecursionError:
        return RowError("invalid_json", "", "invalid JSON: nested too deeply")
    except json.JSONDecodeError as exc:
        if exc.pos >= len(body) or exc.msg.startswith("Unterminated string"):
            return RowError("truncated_json", "",
                            "invalid JSON: the row ends before its JSON value is complete "
                            f"({exc.msg.lower()}, column {exc.colno}); was it truncated?")
        return RowError("invalid_json", "", f"invalid JSON: {exc.msg} at column {exc.colno}")
    except ValueError as exc:
        return RowError("invalid_json", "", f"invalid JSON: {exc}")
    if end != len(body):
        return RowError("invalid_json", "",
                        f"invalid JSON: extra data after the JSON value at column {end + 1}")
    return obj


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
            elif _has_lone_surrogate(content):
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


# ---------------------------------------------------------------------------------------------
# Duplicate counting in bounded memory


class DuplicateCounter:
    """Holds `(content hash, row id)` pairs (see services.common.dataset.dedupe) in memory that
    stays flat.

    Pairs go to one of 256 buckets by the hash's low bits; when the buckets together hold more
    than `spill_at` pairs they are appended to per-bucket files in a spill folder (its own
    temporary one, or `spill_dir` shared by several counters, each under its own `name`).
    Duplicates are then found bucket by bucket, so at most 1/256 of the pairs are in memory.
    """

    BUCKET_BITS = dedupe.BUCKET_BITS

    def __init__(self, spill_at: int = 1_000_000, *, spill_dir: str | None = None,
                 name: str = "0"):
        self.mask = (1 << self.BUCKET_BITS) - 1
        self.buckets = [array("q") for _ in range(self.mask + 1)]  # hot loops append to these
        self.spill_at = spill_at
        self._held = 0
        self._name = name
        self._shared_dir = spill_dir
        self._own_dir: tempfile.TemporaryDirectory | None = None

    def add(self, h: int, row: int) -> None:
        b = self.buckets[h & self.mask]
        b.append(h)
        b.append(row)
        self._held += 1
        if self._held >= self.spill_at:
            self.spill()

    def _dir(self) -> str:
        if self._shared_dir is not None:
            return self._shared_dir
        if self._own_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix=scratch_prefix("dups"))
        return self._own_dir.name

    def spill(self) -> None:
        """Move every held pair to disk (callers that append to `buckets` directly call it
        every `spill_at` pairs)."""
        folder = self._dir()
        for i, bucket in enumerate(self.buckets):
            if bucket:
                with open(os.path.join(folder, f"{self._name}.{i}"), "ab") as f:
                    bucket.tofile(f)
                del bucket[:]
        self._held = 0

    def folder(self) -> str | None:
        return self._shared_dir or (self._own_dir.name if self._own_dir else None)

    def close(self) -> None:
        if self._own_dir is not None:
            self._own_dir.cleanup()
            self._own_dir = None


def iter_buckets(folder: str | None, buckets: list[array] | None = None,
                 bases: dict[str, int] | None = None) -> Iterator[array]:
    """Each bucket's `(hash, global row id)` pairs: those spilled into `folder` (files
    `<name>.<bucket>`, their ids shifted by `bases[name]`) and the in-memory `buckets`."""
    by_bucket: dict[int, list[tuple[str, str]]] = {}
    if folder is not None:
        for entry in sorted(os.listdir(folder)):
            name, _, bucket = entry.rpartition(".")
            if name and bucket.isdigit():
                by_bucket.setdefault(int(bucket), []).append((name, os.path.join(folder, entry)))
    n_buckets = max([len(buckets or [])] + [b + 1 for b in by_bucket])
    for i in range(n_buckets):
        values = array("q")
        for name, spilled in by_bucket.get(i, ()):
            part = array("q")
            with open(spilled, "rb") as f:
                part.frombytes(f.read())
            base = (bases or {}).get(name, 0)
            if base:
                for k in range(1, len(part), 2):
                    part[k] += base
            values.extend(part)
        if buckets is not None and i < len(buckets):
            values.extend(buckets[i])
        yield values


def count_duplicates(path: Path, reader: "RowReader", folder: str | None,
                     buckets: list[array] | None = None,
                     bases: dict[str, int] | None = None) -> int:
    """Rows whose normalised bytes repeat an earlier row's (ids are global entry numbers).
    Only rows whose hash repeats are read again (a second pass over the file, done only when
    there are any), and those are compared on their bytes."""
    candidates = dedupe.repeated_hash_ids(iter_buckets(folder, buckets, bases))
    if not candidates:
        return 0
    with tempfile.TemporaryFile(prefix="wintrain-dupcheck-") as spool:
        where: dict[int, tuple[int, int]] = {}
        offset = 0
        number = 0
        for block in reader.blocks():
            for raw in block:
                number += 1
                if number not in candidates:
                    continue
                text = raw.decode("utf-8")
                key = dedupe.row_key(raw, text, parse_row(text.strip(_WS)))
                spool.write(key)
                where[number] = (offset, len(key))
                offset += len(key)
        spool.flush()
        fd = spool.fileno()

        def same(i: int, j: int) -> bool:
            (oi, ni), (oj, nj) = where[i], where[j]
            return ni == nj and os.pread(fd, ni, oi) == os.pread(fd, nj, oj)

        return sum(1 for _ in dedupe.find_duplicates(iter_buckets(folder, buckets, bases), same))


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass
class _Partial:
    """What one pass over (a byte range of) a file found; partials of ranges add up."""

    entries: int = 0  # lines (JSONL) or elements read, blank ones included
    total: int = 0
    valid: int = 0
    systems: int = 0
    pair_messages: int = 0
    turns: dict[int, int] = field(default_factory=dict)
    chars: dict[int, int] = field(default_factory=dict)
    issues: list[tuple[int, str, str, str]] = field(default_factory=list)  # local numbers
    issue_counts: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    formats: dict[str, int] = field(default_factory=dict)


def _validate_range(reader: RowReader, start: int, end: int | None, max_errors: int,
                    dups: DuplicateCounter, should_stop: Callable[[], bool] | None) -> _Partial:
    """Check every row of one byte range (the whole file when start=0, end=None)."""
    part = _Partial()
    issues, issue_counts, formats = part.issues, part.issue_counts, part.formats

    def record(number: int, problems: list[tuple[str, str, str]]) -> None:
        for k, (field_, code, desc) in enumerate(problems):
            issue_counts[code] = issue_counts.get(code, 0) + 1
            if k >= MAX_ISSUES_PER_ROW or len(issues) >= max_errors:
                part.truncated = True
                continue
            issues.append((number, field_, code, desc))

    total = valid = 0
    systems = pair_messages = 0
    turns_small = [0] * 64  # messages per conversation, the usual counts
    turns = part.turns
    chars_hist: Counter[int] = Counter()
    chars_seen = array("q")  # folded into chars_hist in C every _FOLD_EVERY rows
    add_chars = chars_seen.append
    buckets, mask, spill_at = dups.buckets, dups.mask, dups.spill_at
    row_key, content_hash = dedupe.row_key, dedupe.content_hash
    held = 0
    scan = scan_json
    max_bytes = reader.max_row_bytes
    number = 0
    for block in reader.blocks(start, end):
        if should_stop is not None and should_stop():
            raise Cancelled("validation cancelled")
        for raw in block:
            number += 1
            if type(raw) is not bytes:
                total += 1
                record(number, [(raw.field, raw.code, raw.detail)])
                continue
            if not raw:
                continue
            if len(raw) > max_bytes:
                stripped = raw.rstrip(JSON_WHITESPACE)
                if len(stripped) > max_bytes:
                    total += 1
                    err = reader.too_long(len(stripped))
                    record(number, [(err.field, err.code, err.detail)])
                    continue
            total += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                err = bad_utf8(raw, exc)
                record(number, [(err.field, err.code, err.detail)])
                continue
            try:
                obj, end_ = scan(text, 0)
                if end_ != len(text) and not text[end_:].isspace():
                    obj = explain_json(text)
            except (StopIteration, ValueError, RecursionError):
                if text.isspace():  # a blank line is not a row
                    total -= 1
                    continue
                obj = explain_json(text)
            if type(obj) is RowError:
                record(number, [(obj.field, obj.code, obj.detail)])
                continue
            # The common case: the normalised row ProcessDataset would write (its fast path
            # accepts exactly the valid conversations rows; explain_row says what is wrong with
            # any other). It is also the row's duplicate key.
            key = row_key(raw, text, obj)
            if key is None:
                fmt = detect_row_format(obj)
                problems = explain_row(obj)
                if problems:
                    formats[fmt] = formats.get(fmt, 0) + 1
                    record(number, problems)
                    continue
                key = raw  # pragma: no cover - the two agree (tests hold it)
            conv = obj["conversations"]
            system = conv[0]["role"] == "system"
            chars = 0
            for m in conv:
                chars += len(m["content"])
            valid += 1
            n = len(conv)
            if n < 64:
                turns_small[n] += 1
            else:
                turns[n] = turns.get(n, 0) + 1
            add_chars(chars)
            if system:
                systems += 1
                n -= 1
            pair_messages += n
            h = content_hash(key)
            b = buckets[h & mask]
            b.append(h)
            b.append(number)
            held += 1
            if held >= spill_at:
                dups.spill()
                held = 0
            if len(chars_seen) >= _FOLD_EVERY:
                chars_hist.update(chars_seen)
                del chars_seen[:]
    chars_hist.update(chars_seen)
    for n, count in enumerate(turns_small):
        if count:
            turns[n] = count
    part.entries, part.total, part.valid = number, total, valid
    part.systems, part.pair_messages = systems, pair_messages
    part.chars = dict(chars_hist)
    return part


def default_workers() -> int:
    """Worker processes for a large JSONL file: the CPUs this process may use, at most 4.
    (On 2 idle cores, 2 workers validate a 340 MB file 1.8x faster than one process; on cores
    already busy with other work they gain nothing, and `workers=1` keeps it in-process.)"""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def plan_ranges(path: Path, size: int, workers: int) -> list[tuple[int, int | None]]:
    """Byte ranges of a JSONL file for `workers` processes, each starting at a line start;
    one range `(0, None)` when the file is small or one worker is asked for."""
    if workers <= 1 or size < PARALLEL_MIN_BYTES:
        return [(0, None)]
    n = min(workers, max(2, size // (PARALLEL_MIN_BYTES // 4)))  # ranges of 8 MiB at least
    bounds = [0]
    with open(path, "rb") as f:
        for k in range(1, n):
            pos = size * k // n
            f.seek(pos)
            while True:  # the next line start, reading in bounded chunks
                chunk = f.read(1 << 16)
                if not chunk:
                    pos = size
                    break
                newline = chunk.find(b"\n")
                if newline >= 0:
                    pos += newline + 1
                    break
                pos += len(chunk)
            if bounds[-1] < pos < size:
                bounds.append(pos)
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:]))


def scratch_prefix(kind: str) -> str:
    """Prefix of a scratch folder in TMPDIR that names its owner: `wintrain-<kind>-<pid>-`."""
    return f"wintrain-{kind}-{os.getpid()}-"


_SCRATCH = re.compile(r"wintrain-(?:process|validate|dups|dupcheck)-(\d+)-")


def clean_stale_scratch(folder: str | None = None) -> list[str]:
    """Remove scratch folders (`wintrain-process-<pid>-*`, ...) in `folder` (TMPDIR) whose
    owning process is dead, as a kill -9 leaves them; returns the paths removed."""
    import shutil

    folder = folder or tempfile.gettempdir()
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        m = _SCRATCH.match(entry)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        path = os.path.join(folder, entry)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# Parallel runs at a time in this process; a run that finds none free works in-process.
PARALLEL_SLOTS = threading.BoundedSemaphore(1)
PARALLEL_MIN_BYTES = 32 << 20


def run_workers(module: str, payloads: list[dict], workdir: str,
                should_stop: Callable[[], bool] | None, pass_fds: tuple[int, ...] = ()) -> list:
    """Run `python -m <module> --worker <payload as JSON>` once per payload, all at once, and
    return their results in payload order; each worker pickles its result to
    `payload["result"]` in `workdir`. Each worker asks for a parent-death signal first thing
    (not in a preexec_fn, unsafe in a threaded server), so a killed service leaves none behind. Raises Cancelled (workers killed) when `should_stop()` turns true,
    RuntimeError when a worker fails."""
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    procs = []
    try:
        for k, payload in enumerate(payloads):
            payload = dict(payload, result=os.path.join(workdir, f"result-{k}.pickle"),
                           parent_pid=os.getpid())
            payloads[k] = payload
            err = open(os.path.join(workdir, f"stderr-{k}.txt"), "wb")
            proc = subprocess.Popen([sys.executable, "-m", module, "--worker", json.dumps(payload)],
                                    cwd=repo, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, pass_fds=pass_fds)
            err.close()
            procs.append(proc)
        while any(p.poll() is None for p in procs):
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled")
            time.sleep(0.05)
        for k, proc in enumerate(procs):
            if proc.returncode != 0:
                with open(os.path.join(workdir, f"stderr-{k}.txt"), "rb") as f:
                    tail = f.read()[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"{module} worker {k} failed ({proc.returncode}): {tail}")
        results = []
        for payload in payloads:
            with open(payload["result"], "rb") as f:
                results.append(pickle.load(f))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _worker_main() -> None:
    """Entry point of a validation worker: one byte range, partial result pickled."""
    payload = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    die_with_parent(parent_pid=payload["parent_pid"])  # first thing: no orphan after a kill -9
    reader = RowReader(Path(payload["path"]), max_row_bytes=payload["max_row_bytes"])
    dups = DuplicateCounter(spill_dir=payload["spill_dir"], name=payload["name"])
    part = _validate_range(reader, payload["start"], payload["end"], payload["max_errors"],
                           dups, None)
    dups.spill()
    with open(payload["result"], "wb") as f:
        pickle.dump(part, f)


def validate_file(
    path: Path,
    *,
    max_errors: int = DEFAULT_MAX_ERRORS,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    field: str = "file_path",
    should_stop: Callable[[], bool] | None = None,
    workers: int | None = None,
) -> ValidationReport:
    """Validate every row of the dataset at `path` (an already resolved and allowed path).

    Streams the file: memory stays flat whatever its size. A JSONL file over
    PARALLEL_MIN_BYTES is split into line-aligned byte ranges checked by `workers` processes
    (default: `default_workers()`; 1 keeps everything in this process); the report is the same.
    Returns a ValidationReport; row problems are in it, never raised. Raises NotFound (no such
    file), InvalidArgument (a directory, an empty file, a file with no rows; the message names
    `field`), PermissionDenied (unreadable), Cancelled (when `should_stop()` turns true).
    """
    size = check_input_file(path, field=field)
    reader = RowReader(path, max_row_bytes=max_row_bytes)
    max_errors = max(0, max_errors)
    workers = default_workers() if workers is None else workers
    ranges = plan_ranges(path, size, workers) if reader.kind == "jsonl" else [(0, None)]
    parts: list[_Partial] = []
    if len(ranges) > 1 and PARALLEL_SLOTS.acquire(blocking=False):
        try:
            with tempfile.TemporaryDirectory(prefix=scratch_prefix("validate")) as work:
                spill = os.path.join(work, "dups")
                os.mkdir(spill)
                payloads = [{"path": str(path), "start": a, "end": b, "name": f"w{k}",
                             "max_row_bytes": max_row_bytes, "max_errors": max_errors,
                             "spill_dir": spill} for k, (a, b) in enumerate(ranges)]
                parts = run_workers("services.data.validation", payloads, work, should_stop)
                bases, base = {}, 0
                for k, part in enumerate(parts):
                    bases[f"w{k}"] = base
                    base += part.entries
                duplicates = count_duplicates(path, reader, spill, None, bases)
        finally:
            PARALLEL_SLOTS.release()
    else:
        dups = DuplicateCounter()
        try:
            parts = [_validate_range(reader, 0, None, max_errors, dups, should_stop)]
            duplicates = count_duplicates(path, reader, dups.folder(), dups.buckets)
        finally:
            dups.close()
    return _report(path, reader, parts, duplicates, max_errors, field)


def _report(path: Path, reader: RowReader, parts: list[_Partial], duplicates: int,
            max_errors: int, field: str) -> ValidationReport:
    label = reader.label
    issues: list[DatasetIssue] = []
    issue_counts: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    turns: Counter[int] = Counter()
    chars: Counter[int] = Counter()
    truncated = False
    base = total = valid = systems = pair_messages = 0
    for part in parts:
        for number, field_, code, desc in part.issues:
            if len(issues) < max_errors:
                line = base + number
                issues.append(DatasetIssue(line, field_, code, f"{label} {line}: {desc}"))
            else:
                truncated = True
        truncated = truncated or part.truncated
        issue_counts.update(part.issue_counts)
        formats.update(part.formats)
        turns.update(part.turns)
        chars.update(part.chars)
        base += part.entries
        total += part.total
        valid += part.valid
        systems += part.systems
        pair_messages += part.pair_messages
    for issue in reader.file_issues:
        issue_counts[issue.code] += 1
        if len(issues) < max_errors:
            issues.append(issue)
        else:
            truncated = True
    if total == 0:
        raise InvalidArgument.for_field(field, f"{path} contains no rows")

    invalid = total - valid
    if valid:
        formats["conversations"] += valid
    detected = max(formats.items(), key=lambda kv: (kv[1], kv[0] == "conversations"))[0] \
        if formats else "unknown"
    stats = DatasetStats(
        messages_per_role={"system": systems, "user": pair_messages // 2,
                           "assistant": pair_messages // 2},
        turns=LengthStats.from_counts(turns),
        chars=LengthStats.from_counts(chars),
        exact_duplicates=duplicates,
    )
    return ValidationReport(
        is_valid=invalid == 0 and valid > 0 and not reader.file_issues,
        total_samples=total,
        valid_samples=valid,
        invalid_samples=invalid,
        error_messages=[i.message for i in issues],
        issues=issues,
        stats=stats,
        errors_truncated=truncated,
        detected_format=detected,
        issue_counts=dict(issue_counts),
        file_kind=reader.kind,
    )


def validate_rows_for_training(
    path: Path,
    *,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    field: str = "dataset_path",
    max_errors: int = 10,
) -> ValidationReport:
    """Gate for the training service: validate `path` and raise InvalidArgument naming `field`
    (with the first problems) unless every row is valid. Returns the report otherwise."""
    report = validate_file(path, max_errors=max_errors, max_row_bytes=max_row_bytes, field=field)
    if not report.is_valid:
        shown = "; ".join(report.error_messages[:3])
        more = report.invalid_samples - min(3, len(report.error_messages))
        tail = f" (and {more} more)" if more > 0 else ""
        hint = ""
        if report.detected_format not in ("conversations", "unknown"):
            hint = (f" The file looks like the {report.detected_format} format: convert it "
                    "with ProcessDataset first.")
        raise InvalidArgument.for_field(
            field,
            f"dataset has {report.invalid_samples} invalid of {report.total_samples} rows: "
            f"{shown}{tail}.{hint}" if shown else
            f"dataset is not valid: {report.invalid_samples} invalid rows.{hint}")
    return report


if __name__ == "__main__" and "--worker" in sys.argv:
    # Run the module's real copy, so what is pickled names services.data.validation.
    from services.data.validation import _worker_main as _main

    _main()

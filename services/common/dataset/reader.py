"""Reading dataset rows: a JSONL file (one row per line, whatever its extension) or one JSON
array of rows, streamed as bytes in bounded memory, so a bad byte, a truncated last line or an
oversized line is one row error, never a crash. Plain Python, no grpc."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from json import scanner as _json_scanner
from pathlib import Path
from typing import Iterator

from services.common.errors import InvalidArgument, NotFound, PermissionDenied

DEFAULT_MAX_ROW_BYTES = 1 << 20
_READ_CHUNK = 1 << 20
_SNIFF_BYTES = 1 << 16
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class DatasetIssue:
    """One problem in one row. `line` is the 1-based line (JSONL) or row index (JSON array);
    0 for a problem of the whole file."""

    line: int
    field: str
    code: str
    message: str


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


def parse_row(text: str) -> "object | RowError":
    """Parse one row's JSON text; a RowError (`invalid_json` / `truncated_json`) when it is
    not exactly one JSON value (whitespace around it allowed). This is every reader's one
    parse step: the fast scan, and `explain_json` only for a row that fails it. A blank line
    gives the `invalid_json` "blank" error; the loops that skip blank lines check
    `text.isspace()` on an error."""
    try:
        obj, end = scan_json(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return explain_json(text)
    if end == len(text) or text[end:].isspace():
        return obj
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

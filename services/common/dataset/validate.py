"""Dataset validation: streams a dataset file and checks every row of the conversations format,
or of a preference format.

An SFT row is `{"conversations": [{"role": "user", "content": "..."}, ...]}`; a preference row is
a pair in either format of `services.common.dataset.preference` (checked by its `check_pair`).
A file holds one kind of data: SFT conversations or preference pairs. The file is JSONL (one
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
import sys
import tempfile
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from services.common.dataset import dedupe
from services.common.dataset.formats import PREFERENCE_FORMATS, detect_row_format
from services.common.dataset.preference import check_pair, dumps_pair, pair_key
from services.common.dataset.parallel import (  # noqa: F401 - the library's names, here too
    PARALLEL_SLOTS,
    clean_stale_scratch,
    default_workers,
    plan_ranges,
    run_workers,
    scratch_prefix,
)
from services.common.dataset.reader import (  # noqa: F401
    _WS,
    DEFAULT_MAX_ROW_BYTES,
    JSON_WHITESPACE,
    DatasetIssue,
    RowError,
    RowReader,
    bad_utf8,
    check_input_file,
    explain_json,
    parse_row,
    scan_json,
)
from services.common.dataset.report import DatasetStats, LengthStats, ValidationReport
from services.common.dataset.rules import explain_row
from services.common.errors import Cancelled, InvalidArgument
from services.common.proc import die_with_parent

DEFAULT_MAX_ERRORS = 50
# A row with many problems lists only its first few, so one bad row cannot hide the others.
MAX_ISSUES_PER_ROW = 5
_FOLD_EVERY = 1 << 16


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
                obj = parse_row(text.strip(_WS))
                key = dedupe.row_key(raw, text, obj) or pair_key(obj)
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
    pairs: int = 0  # valid preference rows (of `valid`)
    first_sft: int = 0  # local number of the first valid row of each kind (0: none)
    first_pair: int = 0


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
    pairs = first_sft = first_pair = 0
    turns_small = [0] * 64  # messages per conversation, the usual counts
    turns = part.turns
    chars_hist: Counter[int] = Counter()
    chars_seen = array("q")  # folded into chars_hist in C every _FOLD_EVERY rows
    add_chars = chars_seen.append
    buckets, mask, spill_at = dups.buckets, dups.mask, dups.spill_at
    row_key, content_hash = dedupe.row_key, dedupe.content_hash
    held = 0
    parse = parse_row
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
            obj = parse(text)
            if type(obj) is RowError:
                if text.isspace():  # a blank line is not a row
                    total -= 1
                    continue
                record(number, [(obj.field, obj.code, obj.detail)])
                continue
            # The common case: the normalised row ProcessDataset would write (its fast path
            # accepts exactly the valid conversations rows; explain_row says what is wrong with
            # any other). It is also the row's duplicate key.
            key = row_key(raw, text, obj)
            chars = 0
            if key is not None:
                conv = obj["conversations"]
                if not first_sft:
                    first_sft = number
            else:
                fmt = detect_row_format(obj)
                if fmt in PREFERENCE_FORMATS:
                    # A preference pair: the one rule set of services.common.dataset.preference;
                    # its key is the canonical pair (ProcessDataset's output row).
                    pair, problems = check_pair(obj, fmt)
                    formats[fmt] = formats.get(fmt, 0) + 1
                    if problems:
                        record(number, problems)
                        continue
                    key = dumps_pair(pair).encode("utf-8")
                    conv = pair["prompt"] + pair["chosen"]  # stats: prompt + chosen, as a chat
                    chars = len(pair["rejected"][0]["content"])
                    pairs += 1
                    if not first_pair:
                        first_pair = number
                else:
                    problems = explain_row(obj)
                    if problems:
                        formats[fmt] = formats.get(fmt, 0) + 1
                        record(number, problems)
                        continue
                    key = raw  # pragma: no cover - the two agree (tests hold it)
                    conv = obj["conversations"]
                    if not first_sft:
                        first_sft = number
            system = conv[0]["role"] == "system"
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
    part.pairs, part.first_sft, part.first_pair = pairs, first_sft, first_pair
    part.chars = dict(chars_hist)
    return part


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
                parts = run_workers("services.common.dataset.validate", payloads, work, should_stop)
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
    base = total = valid = systems = pair_messages = pairs = 0
    first_sft = first_pair = 0  # global numbers of the first valid row of each kind
    for part in parts:
        if part.first_sft and not first_sft:
            first_sft = base + part.first_sft
        if part.first_pair and not first_pair:
            first_pair = base + part.first_pair
        pairs += part.pairs
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
    file_issues = list(reader.file_issues)
    if first_sft and first_pair:
        file_issues.append(DatasetIssue(
            0, "", "mixed_kinds",
            f"the file mixes SFT conversations ({label} {first_sft} is one) and preference pairs "
            f"({label} {first_pair} is one); a dataset holds one kind of rows"))
    for issue in file_issues:
        issue_counts[issue.code] += 1
        if len(issues) < max_errors:
            issues.append(issue)
        else:
            truncated = True
    if total == 0:
        raise InvalidArgument.for_field(field, f"{path} contains no rows")

    invalid = total - valid
    if valid - pairs:
        formats["conversations"] += valid - pairs
    detected = max(formats.items(), key=lambda kv: (kv[1], kv[0] == "conversations"))[0] \
        if formats else "unknown"
    kind = "preference" if detected in PREFERENCE_FORMATS else "" if detected == "unknown" \
        else "sft"
    stats = DatasetStats(
        messages_per_role={"system": systems, "user": pair_messages // 2,
                           "assistant": pair_messages // 2},
        turns=LengthStats.from_counts(turns),
        chars=LengthStats.from_counts(chars),
        exact_duplicates=duplicates,
    )
    return ValidationReport(
        is_valid=invalid == 0 and valid > 0 and not file_issues,
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
        dataset_kind=kind,
    )


def validate_rows_for_training(
    path: Path,
    *,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    field: str = "dataset_path",
    max_errors: int = 10,
    kind: str = "sft",
) -> ValidationReport:
    """Gate for the training service: validate `path` and raise InvalidArgument naming `field`
    (with the first problems) unless every row is valid and the file holds `kind` data
    ("sft": conversations; "preference": preference pairs, as strategy dpo needs). Returns
    the report otherwise."""
    if kind not in ("sft", "preference"):
        raise ValueError(f"kind must be sft or preference, got {kind!r}")
    report = validate_file(path, max_errors=max_errors, max_row_bytes=max_row_bytes, field=field)
    if report.dataset_kind and report.dataset_kind != kind:
        if kind == "preference":
            desc = ("holds SFT conversations, not preference pairs: strategy dpo trains on rows "
                    'like {"prompt": ..., "chosen": ..., "rejected": ...} (strings or message '
                    'lists) or OpenAI\'s {"input": {"messages": [...]}, "preferred_output": '
                    '[...], "non_preferred_output": [...]}')
        else:
            desc = ("holds preference pairs (prompt / chosen / rejected), not SFT "
                    'conversations: train it with strategy "dpo", or give a conversations '
                    "dataset")
        raise InvalidArgument.for_field(field, f"dataset {desc}")
    if not report.is_valid:
        shown = "; ".join(report.error_messages[:3])
        more = report.invalid_samples - min(3, len(report.error_messages))
        tail = f" (and {more} more)" if more > 0 else ""
        hint = ""
        if report.detected_format not in ("conversations", "unknown") + PREFERENCE_FORMATS:
            hint = (f" The file looks like the {report.detected_format} format: convert it "
                    "with ProcessDataset first.")
        raise InvalidArgument.for_field(
            field,
            f"dataset has {report.invalid_samples} invalid of {report.total_samples} rows: "
            f"{shown}{tail}.{hint}" if shown else
            f"dataset is not valid: {report.invalid_samples} invalid rows.{hint}")
    return report


if __name__ == "__main__" and "--worker" in sys.argv:
    # Run the module's real copy, so what is pickled names services.common.dataset.validate.
    from services.common.dataset.validate import _worker_main as _main

    _main()

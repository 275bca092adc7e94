"""ProcessDataset: normalise a dataset to the conversations format, remove exact duplicates and
write train/val/test splits (or one processed.json) atomically.

Memory is proportional to the number of rows, not to their size: the first pass streams the
input, normalises each row and appends its serialised form to an anonymous spool file (beside
the outputs, removed by the OS even after a crash), keeping only an offset and a hash per row
(about 33 bytes a row). Duplicates are found bucket by bucket from the hashes; the split is a
permutation of row numbers; the second pass copies each row from the spool into its output
file. Outputs are written into a staging folder beside `output_dir`, which is then exchanged
with it in one step, so a failure, a cancellation or a kill leaves the old set or the new one,
never a mix and never a partial file. A large JSONL input can have its first pass split over
worker processes by byte range (see validation.plan_ranges); the result is the same.

Plain Python, no grpc.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import pickle
import random
import shutil
import stat
import sys
import tempfile
import time
from array import array
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from unicodedata import normalize

from services.common.dataset.dedupe import content_hash, find_duplicates
from services.common.errors import AlreadyExists, Cancelled, InvalidArgument, PermissionDenied
from services.common.fsutil import atomic_write_text
from services.common.proc import die_with_parent
from services.common.dataset.preference import check_pair, dumps_pair, prompt_key
from services.common.dataset.formats import (
    FORMATS,
    PREFERENCE_FORMATS,
    detect_row_format,
    dumps_conversation,
    fast_conversation_line,
    normalize_format_type,
    normalize_row,
)
from services.common.dataset.validate import (
    DEFAULT_MAX_ROW_BYTES,
    JSON_WHITESPACE,
    PARALLEL_SLOTS,
    RowError,
    RowReader,
    check_input_file,
    default_workers,
    parse_row,
    plan_ranges,
    run_workers,
    scratch_prefix,
)

MANIFEST_NAME = ".wintrain-data.json"
SPLIT_FILES = ("train.json", "val.json", "test.json")
UNSPLIT_FILE = "processed.json"
RATIO_TOLERANCE = 1e-6
_CHECK_CANCEL_EVERY = 4096
_BUCKET_BITS = 8


@dataclass(frozen=True)
class SplitSpec:
    """How to split: the three ratios (each in [0, 1], summing to 1 within 1e-6), and a
    deterministic shuffle. Defaults are the original API's."""

    train_ratio: float = 0.8
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    shuffle: bool = True
    seed: int = 42

    def check(self, prefix: str = "split_config") -> None:
        """Raise InvalidArgument naming every bad field (`split_config.train_ratio`, ...)."""
        bad: list[tuple[str, str]] = []
        ratios = (("train_ratio", self.train_ratio), ("val_ratio", self.val_ratio),
                  ("test_ratio", self.test_ratio))
        for name, value in ratios:
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                bad.append((f"{prefix}.{name}", f"must be between 0 and 1, got {value!r}"))
        if not bad:
            total = sum(v for _, v in ratios)
            if abs(total - 1.0) > RATIO_TOLERANCE:
                desc = (f"train_ratio + val_ratio + test_ratio must sum to 1, got "
                        f"{self.train_ratio:g} + {self.val_ratio:g} + {self.test_ratio:g} = "
                        f"{total:g}")
                bad.append((prefix, desc))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            bad.append((f"{prefix}.seed", f"must be an integer, got {self.seed!r}"))
        if bad:
            raise InvalidArgument.for_fields(bad)

    def counts(self, n: int) -> tuple[int, int, int]:
        """Rows per split for `n` rows: each the nearest whole number to its share, the
        remainder going to the largest fractions (train first on ties), so every row lands
        exactly once and 1 or 2 rows go to train."""
        ratios = (self.train_ratio, self.val_ratio, self.test_ratio)
        total = sum(ratios)
        exact = [n * r / total for r in ratios]
        base = [int(math.floor(x + 1e-9)) for x in exact]
        order = sorted((k for k in range(3) if ratios[k] > 0),
                       key=lambda k: (-(exact[k] - base[k]), k))
        remainder = n - sum(base)
        i = 0
        while remainder > 0 and order:
            base[order[i % len(order)]] += 1
            remainder -= 1
            i += 1
        return base[0], base[1], base[2]


@dataclass
class OutputFile:
    """One file written."""

    path: Path
    rows: int
    size_bytes: int


@dataclass
class ProcessReport:
    """Result of `process_file`."""

    output_dir: Path
    total_samples: int  # rows read (non-blank lines, or array elements)
    kept_samples: int  # rows written in all
    train_samples: int  # 0 without a split
    val_samples: int
    test_samples: int
    dropped: dict[str, int]  # rows dropped, by reason (formats.DROP_REASONS)
    duplicates_removed: int
    files: list[OutputFile]
    detected_format: str
    repairs: dict[str, int] = field(default_factory=dict)  # rows repaired, by repair
    mode: str = "split"  # "split" or "single"


def _read_manifest(output_dir: Path) -> set[str]:
    try:
        data = json.loads((output_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = data.get("files", []) if isinstance(data, dict) else []
        return {f for f in files if isinstance(f, str)}
    except (OSError, ValueError):
        return set()


def _prepare_output_dir(output_dir: Path, targets: tuple[str, ...], overwrite: bool) -> bool:
    """Check `output_dir` can take `targets` and create it; True when it was created here.
    Raises InvalidArgument (not a folder, a target is a folder) and AlreadyExists (a target
    exists that an earlier run here did not write, unless `overwrite`)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise InvalidArgument.for_field("output_dir", f"{output_dir} exists and is not a directory")
    ours = _read_manifest(output_dir) if output_dir.is_dir() else set()
    for name in targets:
        target = output_dir / name
        if target.is_dir():
            raise InvalidArgument.for_field("output_dir", f"{target} is a directory")
        if target.exists() and name not in ours and not overwrite:
            desc = (f"{target} already exists and was not written by ProcessDataset; "
                    "set overwrite to replace it")
            raise AlreadyExists(f"output_dir: {desc}", [("output_dir", desc)])
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise PermissionDenied(f"output_dir: {output_dir} cannot be created (permission denied)",
                               [("output_dir", "permission denied")]) from None
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgument.for_field(
            "output_dir", f"{output_dir} cannot be created: a parent is not a directory") from None
    return created


@dataclass
class _Pass1:
    """What the first pass over (a byte range of) the input produced."""

    entries: int = 0  # lines (JSONL) or elements read, blank ones included
    total: int = 0
    n_rows: int = 0  # rows spooled
    dropped: dict[str, int] = field(default_factory=dict)
    repairs: dict[str, int] = field(default_factory=dict)
    fmt: str | None = None
    fmt_first: int = 0  # local number of the first row that set `fmt`
    conflict: tuple[int, str] | None = None  # (local number, format) of a row of another format
    offsets: array = field(default_factory=lambda: array("q", [0]))  # row i: [i], [i+1]
    buckets: list[array] = field(default_factory=list)  # (hash, local row) pairs by hash bits
    groups: array = field(default_factory=lambda: array("q"))  # preference: row i's prompt hash


def _pass1(reader: RowReader, start: int, end: int | None, fmt_choice: str, spool,
           should_stop: Callable[[], bool] | None) -> _Pass1:
    """Read, normalise and serialise every row of one byte range (the whole file when
    start=0, end=None), appending the rows to `spool` (a binary file). Stops at the first row
    of a format other than the range's first one when `fmt_choice` is auto (`conflict`)."""
    res = _Pass1()
    dropped, repairs = res.dropped, res.repairs
    mask = (1 << _BUCKET_BITS) - 1
    buckets = res.buckets = [array("q") for _ in range(mask + 1)]
    offsets = res.offsets
    groups = res.groups
    group = None  # the prompt hash of a preference row, appended with the row
    fmt = None if fmt_choice == "auto" else fmt_choice
    fmt_first = 0
    end_offset = 0
    n_rows = 0
    total = 0
    number = 0
    parse = parse_row
    fast_line = fast_conversation_line
    max_bytes = reader.max_row_bytes
    write = spool.write
    for block in reader.blocks(start, end):
        if should_stop is not None and should_stop():
            raise Cancelled("processing cancelled")
        pending: list[bytes] = []
        for raw in block:
            number += 1
            if type(raw) is not bytes:
                total += 1
                dropped[raw.code] = dropped.get(raw.code, 0) + 1
                continue
            if not raw:
                continue
            if len(raw) > max_bytes and len(raw.rstrip(JSON_WHITESPACE)) > max_bytes:
                total += 1
                dropped["row_too_long"] = dropped.get("row_too_long", 0) + 1
                continue
            total += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                dropped["invalid_utf8"] = dropped.get("invalid_utf8", 0) + 1
                continue
            original = text
            escaped = "\\" in text
            # NFC over the whole row: JSON's own characters never compose with text, so this
            # is NFC of every string at once. Strings with escapes are done one by one.
            nfc_text = not escaped
            if nfc_text and not text.isascii():
                text = normalize("NFC", text)
            obj = parse(text)
            if type(obj) is RowError:
                if text.isspace():  # a blank line is not a row
                    total -= 1
                    continue
                dropped[obj.code] = dropped.get(obj.code, 0) + 1
                continue
            # The usual row (clean conversations) takes the fast path, no detection needed.
            # Text without a backslash has no escapes, so its strings need none (raw control
            # characters cannot be in valid JSON).
            out = fast_line(obj, nfc_text, not escaped) \
                if fmt is None or fmt == "conversations" else None
            if out is not None:
                if fmt is None:
                    fmt, fmt_first = "conversations", number
            else:
                if fmt_choice == "auto":
                    row_fmt = detect_row_format(obj)
                    if row_fmt != fmt:
                        if row_fmt == "unknown":
                            reason = ("not_an_object" if type(obj) is not dict
                                      else "unknown_format")
                            dropped[reason] = dropped.get(reason, 0) + 1
                            continue
                        if fmt is not None:
                            res.conflict = (number, row_fmt)
                            break
                        fmt, fmt_first = row_fmt, number
                if fmt in PREFERENCE_FORMATS:
                    # One rule set with validation; a bad pair is dropped for its first problem.
                    if fmt_choice != "auto" and detect_row_format(obj) not in (fmt, "unknown"):
                        dropped["format_mismatch"] = dropped.get("format_mismatch", 0) + 1
                        continue
                    pair, problems = check_pair(obj, fmt, text_is_nfc=nfc_text)
                    if pair is None:
                        code = problems[0][1]
                        dropped[code] = dropped.get(code, 0) + 1
                        continue
                    out = dumps_pair(pair)
                    group = content_hash(prompt_key(pair).encode("utf-8"))
                else:
                    norm = normalize_row(obj, fmt, text_is_nfc=nfc_text)
                    if norm.messages is None:
                        dropped[norm.reason] = dropped.get(norm.reason, 0) + 1
                        continue
                    if norm.repairs:
                        for r in norm.repairs:
                            repairs[r] = repairs.get(r, 0) + 1
                    out = dumps_conversation(norm.messages, plain=not escaped and not norm.joined)
            if out == original:
                data = raw  # already exactly in the output form: no re-encoding
            else:
                try:
                    data = out.encode("utf-8")
                except UnicodeEncodeError:  # an unpaired surrogate escape
                    dropped["invalid_unicode"] = dropped.get("invalid_unicode", 0) + 1
                    continue
            if group is not None:
                groups.append(group)
                group = None
            h = content_hash(data)
            b = buckets[h & mask]
            b.append(h)
            b.append(n_rows)
            n_rows += 1
            end_offset += len(data) + 1
            offsets.append(end_offset)
            pending.append(data)
        if pending:
            pending.append(b"")
            write(b"\n".join(pending))
        if res.conflict is not None:
            break
    spool.flush()
    res.entries, res.total, res.n_rows = number, total, n_rows
    res.fmt, res.fmt_first = fmt, fmt_first
    return res


def _worker_main() -> None:
    """Entry point of a processing worker: pass 1 over one byte range into an inherited
    spool file descriptor; the result is pickled."""
    payload = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    die_with_parent(parent_pid=payload["parent_pid"])  # first thing: no orphan after a kill -9
    reader = RowReader(Path(payload["path"]), max_row_bytes=payload["max_row_bytes"])
    with os.fdopen(payload["spool_fd"], "wb", closefd=False) as spool:
        res = _pass1(reader, payload["start"], payload["end"], payload["fmt_choice"], spool,
                     None)
    with open(payload["result"], "wb") as f:
        pickle.dump(res, f)


def _find_duplicates(parts: list[_Pass1], bases: list[int], n: int,
                     read: Callable[[int], bytes]) -> bytearray:
    """Flags (1 = a later copy of an earlier row) over all parts, by global row; buckets are
    visited part by part in input order, so the first copy is the one kept. Rows with equal
    hashes are compared on their bytes (`read(global row)`)."""
    dup = bytearray(n)

    def buckets():
        for j in range(1 << _BUCKET_BITS):
            pairs = array("q")
            for part, base in zip(parts, bases):
                b = part.buckets[j]
                if base:
                    b = array("q", b)
                    for k in range(1, len(b), 2):
                        b[k] += base
                pairs.extend(b)
                part.buckets[j] = array("q")  # free as we go
            yield pairs

    for i in find_duplicates(buckets(), lambda i, j: read(i) == read(j)):
        dup[i] = 1
    return dup


def _row_reader(parts: list[_Pass1], spools: list, bases: list[int]) -> Callable[[int], bytes]:
    """read(global row) -> its bytes (newline included) from the part's spool."""
    pread = os.pread
    if len(parts) == 1:
        fd, offsets = spools[0].fileno(), parts[0].offsets

        def read(i: int) -> bytes:
            start = offsets[i]
            return pread(fd, offsets[i + 1] - start, start)

        return read
    fds = [s.fileno() for s in spools]
    all_offsets = [p.offsets for p in parts]

    def read_any(i: int) -> bytes:
        k = bisect_right(bases, i) - 1
        offsets = all_offsets[k]
        i -= bases[k]
        start = offsets[i]
        return pread(fds[k], offsets[i + 1] - start, start)

    return read_any


def process_file(
    input_path: Path,
    output_dir: Path,
    *,
    format_type: str | None = "auto",
    split: SplitSpec | None = None,
    overwrite: bool = False,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    should_stop: Callable[[], bool] | None = None,
    workers: int | None = None,
) -> ProcessReport:
    """Normalise `input_path` (any of FORMATS; detected per file when `format_type` is auto),
    drop rows that cannot be repaired (counted by reason) and exact duplicates, then write
    train.json / val.json / test.json (with `split`) or processed.json (without) into
    `output_dir` as JSONL, exactly as the original wrote them.

    Paths are already resolved and allowed. Raises NotFound / InvalidArgument for the input
    (missing, a directory, empty, no rows, rows of several formats, no row left to write),
    InvalidArgument for `format_type` / `split` (naming the field), AlreadyExists when an output
    would replace a file this function did not write there (unless `overwrite`), Cancelled
    when `should_stop()` turns true. Nothing is written unless the whole run succeeds.
    `workers` as in validation.validate_file.
    """
    try:
        fmt_choice = normalize_format_type(format_type)
    except ValueError as exc:
        raise InvalidArgument.for_field("format_type", str(exc)) from None
    if split is not None:
        split.check()
    check_input_file(input_path, field="input_file")
    targets = SPLIT_FILES if split is not None else (UNSPLIT_FILE,)
    created = _prepare_output_dir(output_dir, targets, overwrite)
    try:
        return _process(input_path, output_dir, fmt_choice, split, targets, max_row_bytes,
                        should_stop, default_workers() if workers is None else workers)
    except BaseException:
        if created:
            try:
                output_dir.rmdir()  # only if still empty
            except OSError:
                pass
        raise


def _process(input_path: Path, output_dir: Path, fmt_choice: str, split: SplitSpec | None,
             targets: tuple[str, ...], max_row_bytes: int, should_stop: Callable[[], bool] | None,
             workers: int) -> ProcessReport:
    reader = RowReader(input_path, max_row_bytes=max_row_bytes)
    label = reader.label
    size = input_path.stat().st_size
    ranges = plan_ranges(input_path, size, workers) if reader.kind == "jsonl" else [(0, None)]
    spools: list = []
    try:
        parallel = len(ranges) > 1 and PARALLEL_SLOTS.acquire(blocking=False)
        try:
            spools = [tempfile.TemporaryFile(dir=output_dir, prefix=".wintrain-spool-")
                      for _ in (ranges if parallel else [0])]
            if parallel:
                with tempfile.TemporaryDirectory(prefix=scratch_prefix("process")) as work:
                    payloads = [{"path": str(input_path), "start": a, "end": b,
                                 "fmt_choice": fmt_choice, "max_row_bytes": max_row_bytes,
                                 "spool_fd": spool.fileno()}
                                for (a, b), spool in zip(ranges, spools)]
                    parts = run_workers("services.data.processing", payloads, work, should_stop,
                                        pass_fds=tuple(s.fileno() for s in spools))
            else:
                parts = [_pass1(reader, 0, None, fmt_choice, spools[0], should_stop)]
        finally:
            if parallel:
                PARALLEL_SLOTS.release()

        # One format per file: the first part's, checked against every later row.
        fmt, fmt_line, base = None, 0, 0
        for part in parts:
            if part.fmt is not None:
                if fmt is None:
                    fmt, fmt_line = part.fmt, base + part.fmt_first
                elif part.fmt != fmt:
                    _mixed(label, fmt, fmt_line, part.fmt, base + part.fmt_first)
            if part.conflict is not None:
                _mixed(label, fmt or part.fmt, fmt_line or base + part.fmt_first,
                       part.conflict[1], base + part.conflict[0])
            base += part.entries
        total = sum(p.total for p in parts)
        if total == 0:
            raise InvalidArgument.for_field("input_file", f"{input_path} contains no rows")
        dropped: Counter[str] = Counter()
        repairs: Counter[str] = Counter()
        for part in parts:
            dropped.update(part.dropped)
            repairs.update(part.repairs)

        bases = []
        n_rows = 0
        for part in parts:
            bases.append(n_rows)
            n_rows += part.n_rows
        read = _row_reader(parts, spools, bases)
        dup = _find_duplicates(parts, bases, n_rows, read)
        duplicates = sum(dup) if n_rows else 0
        kept = array("q", (i for i in range(n_rows) if not dup[i])) if duplicates \
            else array("q", range(n_rows))
        del dup
        if not kept:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
            desc = (f"no row can be written: all {total} rows were dropped"
                    + (f" ({reasons})" if reasons else "")
                    + (f", {duplicates} duplicates" if duplicates else ""))
            raise InvalidArgument.for_field("input_file", desc)

        if split is not None and fmt in PREFERENCE_FORMATS:
            groups = array("q")
            for part in parts:
                groups.extend(part.groups)
            kept, (n_train, n_val, n_test) = _split_by_prompt(kept, groups, split)
            outputs = [(targets[0], 0, n_train), (targets[1], n_train, n_train + n_val),
                       (targets[2], n_train + n_val, len(kept))]
        elif split is not None:
            if split.shuffle:
                # Same permutation as the original's random.seed(seed); random.shuffle(rows).
                random.Random(split.seed).shuffle(kept)
            n_train, n_val, n_test = split.counts(len(kept))
            outputs = [(targets[0], 0, n_train), (targets[1], n_train, n_train + n_val),
                       (targets[2], n_train + n_val, len(kept))]
        else:
            n_train = n_val = n_test = 0
            outputs = [(targets[0], 0, len(kept))]

        files: list[OutputFile] = []
        staging = _staging_dir(output_dir)
        try:
            for name, lo, hi in outputs:
                with open(staging / name, "xb") as handle:  # mode as open() makes it
                    write = handle.write
                    for block in range(lo, hi, _CHECK_CANCEL_EVERY):
                        if should_stop is not None and should_stop():
                            raise Cancelled("processing cancelled")
                        write(b"".join([read(kept[k]) for k in
                                        range(block, min(block + _CHECK_CANCEL_EVERY, hi))]))
                    handle.flush()
                    os.fsync(handle.fileno())
                    files.append(OutputFile(output_dir / name, hi - lo, handle.tell()))
            _swap_in(staging, output_dir, targets, input_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        for spool in spools:
            spool.close()

    return ProcessReport(
        output_dir=output_dir,
        total_samples=total,
        kept_samples=len(kept),
        train_samples=n_train,
        val_samples=n_val,
        test_samples=n_test,
        dropped=dict(dropped),
        duplicates_removed=duplicates,
        files=files,
        detected_format=fmt or (fmt_choice if fmt_choice != "auto" else "unknown"),
        repairs=dict(repairs),
        mode="split" if split is not None else "single",
    )


def _split_by_prompt(kept: array, groups: array, split: SplitSpec
                     ) -> tuple[array, tuple[int, int, int]]:
    """Preference rows in split order, and the rows per split. The pairs of one prompt stay
    in one split (a held-out pair never shares its prompt with a training pair): prompts are
    taken in input order (shuffled with `seed` when `shuffle`), and each goes whole to the
    split furthest short of its share (`split.counts` of the rows; train first on ties), so
    the counts match the ratios to within one prompt's pairs."""
    order: dict[int, list[int]] = {}
    for i in kept:
        order.setdefault(groups[i], []).append(i)
    prompts = list(order.values())
    if split.shuffle:
        random.Random(split.seed).shuffle(prompts)
    want = split.counts(len(kept))
    have = [0, 0, 0]
    chosen: list[list[int]] = [[], [], []]
    for rows in prompts:
        k = max(range(3), key=lambda j: (want[j] - have[j], -j))  # the one most short
        chosen[k].extend(rows)
        have[k] += len(rows)
    out = array("q", chosen[0])
    out.extend(chosen[1])
    out.extend(chosen[2])
    return out, (have[0], have[1], have[2])


_STAGING = ".wintrain-new-"


def _staging_dir(output_dir: Path) -> Path:
    """A new, empty sibling of `output_dir` (same file system) named after its owner, after
    removing the ones a killed run left (their pid is dead)."""
    parent, stem = output_dir.parent, f".{output_dir.name}{_STAGING}"
    try:
        for entry in os.listdir(parent):
            if entry.startswith(stem):
                pid = entry[len(stem):].split("-", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(parent / entry, ignore_errors=True)
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=f"{stem}{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system
    or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, output_dir: Path, targets: tuple[str, ...], input_path: Path) -> None:
    """Make the complete set in `staging` the content of `output_dir` in one step, so a reader
    (or a crash) sees the old set or the new one, never a mix: the folder's other files are
    hard-linked into `staging`, the manifest is written there, and the two folders are
    exchanged. Where that cannot be done (a subfolder in `output_dir`, no renameat2) the files
    are renamed one by one, manifest first."""
    others = [e for e in os.scandir(output_dir) if e.name not in targets and e.name != MANIFEST_NAME
              and not e.name.startswith(".wintrain-spool-")]
    atomic = all(e.is_file(follow_symlinks=False) or e.is_symlink() for e in others)
    if atomic:
        try:
            for e in others:
                os.link(e.path, staging / e.name, follow_symlinks=False)
        except OSError:
            atomic = False
    _write_manifest(staging if atomic else output_dir, targets, input_path, existing=output_dir)
    if atomic:
        os.chmod(staging, stat.S_IMODE(os.stat(output_dir).st_mode))
        if _exchange(staging, output_dir):
            _fsync_dir(output_dir.parent)
            return  # `staging` now holds the old set; the caller removes it
    for name in targets:
        os.replace(staging / name, output_dir / name)
    _fsync_dir(output_dir)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mixed(label: str, fmt: str, line: int, other: str, other_line: int) -> None:
    desc = (f"mixes dataset formats: {label} {line} is {fmt}, {label} {other_line} is {other}; "
            f"use one format per file, or set format_type to keep only the rows of one format")
    raise InvalidArgument.for_field("input_file", desc)


def _write_manifest(output_dir: Path, written: tuple[str, ...], input_path: Path,
                    existing: Path | None = None) -> None:
    """Record the files this module owns in `output_dir`, so a later run may replace them
    (`existing`: the folder whose earlier manifest to extend, when not `output_dir`)."""
    existing = existing or output_dir
    ours = {name for name in _read_manifest(existing) if (existing / name).exists()}
    ours.update(written)
    manifest = {
        "written_by": "wintrain.data.ProcessDataset",
        "files": sorted(ours),
        "last_run": {"input_file": str(input_path), "files": list(written),
                     "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    atomic_write_text(output_dir / MANIFEST_NAME,
                      json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")


__all__ = ["SplitSpec", "OutputFile", "ProcessReport", "process_file", "FORMATS",
           "MANIFEST_NAME", "SPLIT_FILES", "UNSPLIT_FILE"]


if __name__ == "__main__" and "--worker" in sys.argv:
    # Run the module's real copy, so what is pickled names services.data.processing.
    from services.data.processing import _worker_main as _main

    _main()

"""Exact duplicates: one definition for ValidateDataset and ProcessDataset.

Two rows are duplicates when their normalised rows (the conversations JSONL line ProcessDataset
writes: NFC, trimmed, canonical roles) are the same bytes. Each row is keyed by a stable
content hash (64 bits of blake2b of those bytes), the same in every process whatever
PYTHONHASHSEED; rows whose hashes are equal are compared on their bytes, so a hash collision
never drops a distinct row.
"""

from __future__ import annotations

from array import array
from hashlib import blake2b
from typing import Callable, Iterable, Iterator

from services.common.dataset.formats import fast_conversation_line

BUCKET_BITS = 8


def content_hash(data: bytes) -> int:
    """The stable 64-bit key of a normalised row (a signed int, to fit an array("q"))."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little", signed=True)


def find_duplicates(buckets: Iterable[array], same: Callable[[int, int], bool]) -> Iterator[int]:
    """Ids of later copies. Each bucket is an array of (hash, id) pairs in input order (all
    copies of a row fall in one bucket); `same(kept_id, id)` compares two rows' bytes and is
    called only when their hashes are equal."""
    for b in buckets:
        first: dict = {}
        get = first.get
        for k in range(0, len(b), 2):
            h, i = b[k], b[k + 1]
            kept = get(h)
            if kept is None:
                first[h] = i
            elif type(kept) is list:  # distinct rows that share this hash
                for j in kept:
                    if same(j, i):
                        yield i
                        break
                else:
                    kept.append(i)
            elif same(kept, i):
                yield i
            else:
                first[h] = [kept, i]


def repeated_hash_ids(buckets: Iterable[array]) -> set[int]:
    """Ids of every row whose hash is shared with another row (the only rows whose bytes
    `find_duplicates` will compare)."""
    out: set[int] = set()
    for b in buckets:
        first: dict = {}
        for k in range(0, len(b), 2):
            h, i = b[k], b[k + 1]
            j = first.setdefault(h, i)
            if j != i:
                out.add(j)
                out.add(i)
    return out


def row_key(raw: bytes, text: str, obj: object) -> "bytes | None":
    """The normalised row of a valid conversations row (`obj` parsed from `text`, decoded from
    `raw`) as bytes: what ProcessDataset writes for it and what duplicates are judged on.
    None when the row is not a clean conversation."""
    out = fast_conversation_line(obj, False, "\\" not in text)
    if out is None:
        return None
    if out == text:
        return raw
    try:
        return out.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate escape
        return None

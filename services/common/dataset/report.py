"""What a validation reports: issues, statistics and the report itself. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.dataset.reader import DatasetIssue

__all__ = ["DatasetIssue", "LengthStats", "DatasetStats", "ValidationReport"]


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
    # "sft" (conversations, or a format ProcessDataset converts to them), "preference"
    # (preference pairs), "" (no row of a known format).
    dataset_kind: str = ""

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from wintrain.api.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ValidateDatasetRequest(_message.Message):
    __slots__ = ("file_path",)
    FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    file_path: str
    def __init__(self, file_path: _Optional[str] = ...) -> None: ...

class DatasetIssue(_message.Message):
    __slots__ = ("line", "field", "code", "message")
    LINE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    line: int
    field: str
    code: str
    message: str
    def __init__(self, line: _Optional[int] = ..., field: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class LengthStats(_message.Message):
    __slots__ = ("min", "p50", "p90", "p99", "max", "mean")
    MIN_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float
    def __init__(self, min: _Optional[float] = ..., p50: _Optional[float] = ..., p90: _Optional[float] = ..., p99: _Optional[float] = ..., max: _Optional[float] = ..., mean: _Optional[float] = ...) -> None: ...

class DatasetStats(_message.Message):
    __slots__ = ("messages_per_role", "turns", "chars", "exact_duplicates")
    class MessagesPerRoleEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MESSAGES_PER_ROLE_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    CHARS_FIELD_NUMBER: _ClassVar[int]
    EXACT_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    messages_per_role: _containers.ScalarMap[str, int]
    turns: LengthStats
    chars: LengthStats
    exact_duplicates: int
    def __init__(self, messages_per_role: _Optional[_Mapping[str, int]] = ..., turns: _Optional[_Union[LengthStats, _Mapping]] = ..., chars: _Optional[_Union[LengthStats, _Mapping]] = ..., exact_duplicates: _Optional[int] = ...) -> None: ...

class ValidateDatasetResponse(_message.Message):
    __slots__ = ("is_valid", "total_samples", "valid_samples", "invalid_samples", "error_messages", "issues", "stats", "errors_truncated", "detected_format", "issue_counts", "file_kind", "dataset_kind")
    class IssueCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    IS_VALID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALID_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INVALID_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ISSUES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    DETECTED_FORMAT_FIELD_NUMBER: _ClassVar[int]
    ISSUE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    FILE_KIND_FIELD_NUMBER: _ClassVar[int]
    DATASET_KIND_FIELD_NUMBER: _ClassVar[int]
    is_valid: bool
    total_samples: int
    valid_samples: int
    invalid_samples: int
    error_messages: _containers.RepeatedScalarFieldContainer[str]
    issues: _containers.RepeatedCompositeFieldContainer[DatasetIssue]
    stats: DatasetStats
    errors_truncated: bool
    detected_format: str
    issue_counts: _containers.ScalarMap[str, int]
    file_kind: str
    dataset_kind: str
    def __init__(self, is_valid: _Optional[bool] = ..., total_samples: _Optional[int] = ..., valid_samples: _Optional[int] = ..., invalid_samples: _Optional[int] = ..., error_messages: _Optional[_Iterable[str]] = ..., issues: _Optional[_Iterable[_Union[DatasetIssue, _Mapping]]] = ..., stats: _Optional[_Union[DatasetStats, _Mapping]] = ..., errors_truncated: _Optional[bool] = ..., detected_format: _Optional[str] = ..., issue_counts: _Optional[_Mapping[str, int]] = ..., file_kind: _Optional[str] = ..., dataset_kind: _Optional[str] = ...) -> None: ...

class SplitConfig(_message.Message):
    __slots__ = ("train_ratio", "val_ratio", "test_ratio", "shuffle", "seed")
    TRAIN_RATIO_FIELD_NUMBER: _ClassVar[int]
    VAL_RATIO_FIELD_NUMBER: _ClassVar[int]
    TEST_RATIO_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    train_ratio: float
    val_ratio: float
    test_ratio: float
    shuffle: bool
    seed: int
    def __init__(self, train_ratio: _Optional[float] = ..., val_ratio: _Optional[float] = ..., test_ratio: _Optional[float] = ..., shuffle: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class ProcessDatasetRequest(_message.Message):
    __slots__ = ("input_file", "output_dir", "format_type", "split_config", "overwrite")
    INPUT_FILE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    FORMAT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_CONFIG_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    input_file: str
    output_dir: str
    format_type: str
    split_config: SplitConfig
    overwrite: bool
    def __init__(self, input_file: _Optional[str] = ..., output_dir: _Optional[str] = ..., format_type: _Optional[str] = ..., split_config: _Optional[_Union[SplitConfig, _Mapping]] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("path", "rows", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    rows: int
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., rows: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ProcessDatasetResponse(_message.Message):
    __slots__ = ("output_dir", "total_samples", "kept_samples", "train_samples", "val_samples", "test_samples", "dropped", "duplicates_removed", "files", "detected_format", "repairs")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RepairsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    KEPT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DETECTED_FORMAT_FIELD_NUMBER: _ClassVar[int]
    REPAIRS_FIELD_NUMBER: _ClassVar[int]
    output_dir: str
    total_samples: int
    kept_samples: int
    train_samples: int
    val_samples: int
    test_samples: int
    dropped: _containers.ScalarMap[str, int]
    duplicates_removed: int
    files: _containers.RepeatedCompositeFieldContainer[OutputFile]
    detected_format: str
    repairs: _containers.ScalarMap[str, int]
    def __init__(self, output_dir: _Optional[str] = ..., total_samples: _Optional[int] = ..., kept_samples: _Optional[int] = ..., train_samples: _Optional[int] = ..., val_samples: _Optional[int] = ..., test_samples: _Optional[int] = ..., dropped: _Optional[_Mapping[str, int]] = ..., duplicates_removed: _Optional[int] = ..., files: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ..., detected_format: _Optional[str] = ..., repairs: _Optional[_Mapping[str, int]] = ...) -> None: ...

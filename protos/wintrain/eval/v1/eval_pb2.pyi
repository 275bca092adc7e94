from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from wintrain.api.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EvaluateRequest(_message.Message):
    __slots__ = ("model_path", "dataset_path", "metrics", "batch_size", "lora_adapter_path", "max_samples", "max_new_tokens", "per_sample_path", "reference_model_path", "beta")
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LORA_ADAPTER_PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PER_SAMPLE_PATH_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    model_path: str
    dataset_path: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    batch_size: int
    lora_adapter_path: str
    max_samples: int
    max_new_tokens: int
    per_sample_path: str
    reference_model_path: str
    beta: float
    def __init__(self, model_path: _Optional[str] = ..., dataset_path: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., batch_size: _Optional[int] = ..., lora_adapter_path: _Optional[str] = ..., max_samples: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., per_sample_path: _Optional[str] = ..., reference_model_path: _Optional[str] = ..., beta: _Optional[float] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("metrics", "total_samples", "eval_time", "tokens_scored", "skipped_samples", "skip_reasons", "truncated_samples", "per_sample_path", "report_path")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SkipReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVAL_TIME_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SCORED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASONS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PER_SAMPLE_PATH_FIELD_NUMBER: _ClassVar[int]
    REPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.ScalarMap[str, float]
    total_samples: int
    eval_time: float
    tokens_scored: int
    skipped_samples: int
    skip_reasons: _containers.ScalarMap[str, int]
    truncated_samples: int
    per_sample_path: str
    report_path: str
    def __init__(self, metrics: _Optional[_Mapping[str, float]] = ..., total_samples: _Optional[int] = ..., eval_time: _Optional[float] = ..., tokens_scored: _Optional[int] = ..., skipped_samples: _Optional[int] = ..., skip_reasons: _Optional[_Mapping[str, int]] = ..., truncated_samples: _Optional[int] = ..., per_sample_path: _Optional[str] = ..., report_path: _Optional[str] = ...) -> None: ...

class EvaluateProgress(_message.Message):
    __slots__ = ("phase", "samples_done", "samples_total", "result")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_DONE_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    phase: str
    samples_done: int
    samples_total: int
    result: EvaluateResponse
    def __init__(self, phase: _Optional[str] = ..., samples_done: _Optional[int] = ..., samples_total: _Optional[int] = ..., result: _Optional[_Union[EvaluateResponse, _Mapping]] = ...) -> None: ...

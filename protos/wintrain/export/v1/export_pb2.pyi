from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from wintrain.api.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExportOnnxRequest(_message.Message):
    __slots__ = ("model_path", "output_path", "export_format", "opset_version", "lora_adapter_path", "quantize", "overwrite")
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OPSET_VERSION_FIELD_NUMBER: _ClassVar[int]
    LORA_ADAPTER_PATH_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    model_path: str
    output_path: str
    export_format: str
    opset_version: int
    lora_adapter_path: str
    quantize: bool
    overwrite: bool
    def __init__(self, model_path: _Optional[str] = ..., output_path: _Optional[str] = ..., export_format: _Optional[str] = ..., opset_version: _Optional[int] = ..., lora_adapter_path: _Optional[str] = ..., quantize: _Optional[bool] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class ExportedFile(_message.Message):
    __slots__ = ("path", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ParityReport(_message.Message):
    __slots__ = ("max_abs_diff", "tolerance", "tokens_match", "prompts_checked", "tokens_per_prompt", "token_agreement")
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_MATCH_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    max_abs_diff: float
    tolerance: float
    tokens_match: bool
    prompts_checked: int
    tokens_per_prompt: int
    token_agreement: float
    def __init__(self, max_abs_diff: _Optional[float] = ..., tolerance: _Optional[float] = ..., tokens_match: _Optional[bool] = ..., prompts_checked: _Optional[int] = ..., tokens_per_prompt: _Optional[int] = ..., token_agreement: _Optional[float] = ...) -> None: ...

class ExportOnnxResponse(_message.Message):
    __slots__ = ("success", "message", "export_path", "file_size", "export_format", "opset_version", "parity", "files", "export_time", "quantized_path", "quantized_parity", "quantized_size")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OPSET_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    EXPORT_TIME_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_PATH_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_PARITY_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_SIZE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    export_path: str
    file_size: int
    export_format: str
    opset_version: int
    parity: ParityReport
    files: _containers.RepeatedCompositeFieldContainer[ExportedFile]
    export_time: float
    quantized_path: str
    quantized_parity: ParityReport
    quantized_size: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., export_path: _Optional[str] = ..., file_size: _Optional[int] = ..., export_format: _Optional[str] = ..., opset_version: _Optional[int] = ..., parity: _Optional[_Union[ParityReport, _Mapping]] = ..., files: _Optional[_Iterable[_Union[ExportedFile, _Mapping]]] = ..., export_time: _Optional[float] = ..., quantized_path: _Optional[str] = ..., quantized_parity: _Optional[_Union[ParityReport, _Mapping]] = ..., quantized_size: _Optional[int] = ...) -> None: ...

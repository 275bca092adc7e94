from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
HTTP_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
http_envelope: _descriptor.FieldDescriptor
HTTP_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
http_deadline_seconds: _descriptor.FieldDescriptor
JSON_NAME_FIELD_NUMBER: _ClassVar[int]
json_name: _descriptor.FieldDescriptor
DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
default_value: _descriptor.FieldDescriptor
RULES_FIELD_NUMBER: _ClassVar[int]
rules: _descriptor.FieldDescriptor

class HttpEnvelope(_message.Message):
    __slots__ = ("message", "success_field", "data_field")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_FIELD_NUMBER: _ClassVar[int]
    message: str
    success_field: str
    data_field: str
    def __init__(self, message: _Optional[str] = ..., success_field: _Optional[str] = ..., data_field: _Optional[str] = ...) -> None: ...

class FieldRules(_message.Message):
    __slots__ = ("minimum", "maximum", "exclusive_minimum", "exclusive_maximum", "min_length", "max_length")
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_MINIMUM_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIVE_MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    MIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    minimum: float
    maximum: float
    exclusive_minimum: bool
    exclusive_maximum: bool
    min_length: int
    max_length: int
    def __init__(self, minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., exclusive_minimum: _Optional[bool] = ..., exclusive_maximum: _Optional[bool] = ..., min_length: _Optional[int] = ..., max_length: _Optional[int] = ...) -> None: ...

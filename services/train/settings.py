"""TrainingSettings: the typed settings of one task, built once from the proto TrainingConfig.

The defaults live in train.proto only (`default_value` options); the runtime applies them where
a request enters. This module does not restate any of them: the dataclasses are generated from
the message descriptors (one attribute per proto field, with its Python type), and an instance
is read from a message whose defaults are already filled in. Fields without a default that the
client left unset (`max_steps`, `eval_steps`, `model_path`...) are None; a sub-message that is
not set (`lora_config` of a run without LoRA) is None; repeated fields are tuples.

The servicer builds one from the request, pre-flight checks it, the store keeps it as the
plain dict (`as_plain`), and the worker reads it back (`from_plain`), so the recipe, the
strategies and pre-flight read typed attributes (`settings.learning_rate`), as torchtune's
recipes read `cfg`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from services.common.proto_defaults import apply_defaults
from wintrain.train.v1 import train_pb2

_PY_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: float, FieldDescriptor.TYPE_FLOAT: float,
    FieldDescriptor.TYPE_INT32: int, FieldDescriptor.TYPE_INT64: int, FieldDescriptor.TYPE_UINT32: int,
    FieldDescriptor.TYPE_UINT64: int, FieldDescriptor.TYPE_SINT32: int, FieldDescriptor.TYPE_SINT64: int,
    FieldDescriptor.TYPE_BOOL: bool, FieldDescriptor.TYPE_STRING: str, FieldDescriptor.TYPE_ENUM: int,
}


class _SettingsBase:
    """What every generated settings class can do (the message type is `_message`)."""

    _message: type[Message]

    @classmethod
    def from_proto(cls, message: Message):
        """The settings of `message` as it is (defaults are the caller's business: the runtime
        applied them already)."""
        values: dict[str, Any] = {}
        for fd in message.DESCRIPTOR.fields:
            value = getattr(message, fd.name)
            if fd.is_repeated:
                values[fd.name] = tuple(value)
            elif fd.message_type is not None:
                values[fd.name] = (_class_for(fd.message_type).from_proto(value)
                                   if message.HasField(fd.name) else None)
            elif fd.has_presence and not message.HasField(fd.name):
                values[fd.name] = None
            else:
                values[fd.name] = value
        return cls(**values)

    @classmethod
    def from_plain(cls, plain: dict[str, Any]):
        """From the plain dict `as_plain` wrote (what the job store keeps). A row stored before a
        field had its default gets the default (for a current row this changes nothing)."""
        message = cls._message()
        json_format.ParseDict(plain or {}, message, ignore_unknown_fields=True)
        return cls.from_proto(apply_defaults(message))

    @classmethod
    def defaults(cls):
        """Every documented default, nothing else (an empty message with the proto's defaults)."""
        return cls.from_proto(apply_defaults(cls._message()))

    def to_proto(self) -> Message:
        message = self._message()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, _SettingsBase):
                getattr(message, f.name).CopyFrom(value.to_proto())
            elif isinstance(value, tuple):
                getattr(message, f.name).extend(value)
            else:
                setattr(message, f.name, value)
        return message

    def as_plain(self) -> dict[str, Any]:
        """The fields that are set, by proto field name (sub-settings as dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, _SettingsBase):
                out[f.name] = value.as_plain()
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            else:
                out[f.name] = value
        return out

    def is_set(self, name: str) -> bool:
        return getattr(self, name) is not None


def _annotation(fd: FieldDescriptor) -> Any:
    if fd.message_type is not None:
        base: Any = _class_for(fd.message_type)
    else:
        base = _PY_TYPES[fd.type]
    if fd.is_repeated:
        return tuple[base, ...]
    if fd.message_type is not None or fd.has_presence:
        return base | None
    return base


@functools.cache
def _class_for(descriptor: Descriptor) -> type:
    """A frozen dataclass with one attribute per field of the message type."""
    name = descriptor.name.replace("Config", "Settings")
    cls = dataclasses.make_dataclass(
        name, [(fd.name, _annotation(fd)) for fd in descriptor.fields], bases=(_SettingsBase,),
        frozen=True, namespace={"__doc__": f"Typed {descriptor.full_name} (generated from its descriptor)."})
    cls.__module__ = __name__
    cls._message = GetMessageClass(descriptor)
    return cls


TrainingSettings = _class_for(train_pb2.TrainingConfig.DESCRIPTOR)
LoraSettings = _class_for(train_pb2.LoraConfig.DESCRIPTOR)


def settings_from_request(config: Message | None, *, lora: bool) -> TrainingSettings:
    """The settings of a StartTraining request. The runtime filled in the defaults of every
    group the client sent; a group it left out (the whole `config`, or `lora_config` of a LoRA
    run) gets the proto's defaults here: nothing is defaulted twice."""
    message = train_pb2.TrainingConfig()
    if config is not None:
        message.CopyFrom(config)
    else:
        apply_defaults(message)
    if lora and not message.HasField("lora_config"):
        message.lora_config.CopyFrom(apply_defaults(train_pb2.LoraConfig()))
    return TrainingSettings.from_proto(message)

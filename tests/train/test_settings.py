"""TrainingSettings: generated from train.proto's descriptors, the proto's defaults read once."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.proto_defaults import apply_defaults, field_default
from services.train.settings import LoraSettings, TrainingSettings, settings_from_request
from wintrain.train.v1 import train_pb2


def test_every_proto_field_is_a_typed_attribute_and_nothing_else():
    names = [f.name for f in dataclasses.fields(TrainingSettings)]
    assert names == [fd.name for fd in train_pb2.TrainingConfig.DESCRIPTOR.fields]
    hints = {f.name: f.type for f in dataclasses.fields(TrainingSettings)}
    assert hints["learning_rate"] == float | None and hints["per_device_train_batch_size"] == int | None
    assert hints["lora_config"] == LoraSettings | None
    assert {f.name: f.type for f in dataclasses.fields(LoraSettings)}["target_modules"] == tuple[str, ...]


def test_defaults_are_the_protos_and_frozen():
    d = TrainingSettings.defaults()
    for fd in train_pb2.TrainingConfig.DESCRIPTOR.fields:
        declared = field_default(fd)
        if declared is not None:
            assert getattr(d, fd.name) == declared, fd.name
    assert d.max_steps is None and d.eval_steps is None and d.model_path is None and d.lora_config is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.learning_rate = 1.0  # type: ignore[misc]


def test_a_request_without_config_gets_defaults_and_lora_only_for_lora():
    s = settings_from_request(None, lora=False)
    assert s == TrainingSettings.defaults()
    lora = settings_from_request(None, lora=True)
    assert lora.lora_config == LoraSettings.defaults() and lora.lora_config.target_modules == (
        "q_proj", "k_proj", "v_proj", "o_proj")


def test_what_the_client_set_is_kept_and_not_defaulted_again():
    config = train_pb2.TrainingConfig(learning_rate=0.5, max_steps=3)
    apply_defaults(config)  # what the runtime interceptor did
    config.seed = 0  # a value that equals no default survives
    s = settings_from_request(config, lora=False)
    assert (s.learning_rate, s.max_steps, s.seed, s.optim) == (0.5, 3, 0, "adamw_torch")


def test_the_stored_plain_dict_round_trips():
    config = apply_defaults(train_pb2.TrainingConfig(max_steps=5, lora_config=train_pb2.LoraConfig(r=4)))
    s = TrainingSettings.from_proto(config)
    plain = s.as_plain()
    assert plain["lora_config"]["r"] == 4 and plain["max_steps"] == 5 and "eval_steps" not in plain
    assert TrainingSettings.from_plain(plain) == s
    assert s.to_proto() == config

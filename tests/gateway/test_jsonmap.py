"""JSON <-> proto conventions of the gateway (pure unit tests, no server)."""

from __future__ import annotations

import pytest

from gateway.jsonmap import JsonInputError, json_to_message, message_to_json
from gateway.routes import discover_routes, parse_template
from wintrain.data.v1 import data_pb2
from wintrain.inference.v1 import inference_pb2
from wintrain.train.v1 import train_pb2


def test_enum_words_int64_numbers_and_presence_on_output():
    task = train_pb2.TrainingTask(task_id="t", status=train_pb2.TASK_STATUS_CANCELLED,
                                  strategy=train_pb2.STRATEGY_TRL,
                                  config=train_pb2.TrainingConfig(max_steps=4))
    out = message_to_json(task)
    assert out["status"] == "cancelled" and out["strategy"] == "trl"
    assert out["config"] == {"max_steps": 4}  # unset optionals absent
    assert out["progress"] == 0.0 and out["metrics"] == {} and out["error_message"] == ""
    event = train_pb2.TrainingEvent(sequence=9007199254740993, kind=train_pb2.EVENT_KIND_CHECKPOINT)
    out = message_to_json(event)
    assert out["sequence"] == 9007199254740993 and out["kind"] == "checkpoint"
    assert message_to_json(train_pb2.TrainingTask())["status"] == "TASK_STATUS_UNSPECIFIED"


def test_repeated_and_nested_int64_become_numbers():
    resp = data_pb2.ProcessDatasetResponse(files=[data_pb2.OutputFile(size_bytes=2**62), data_pb2.OutputFile(size_bytes=1)])
    assert [f["size_bytes"] for f in message_to_json(resp)["files"]] == [2**62, 1]
    models = inference_pb2.ListModelsResponse(models=[inference_pb2.ModelInfo(parameters=123, memory_bytes=456)])
    out = message_to_json(models)["models"][0]
    assert out["parameters"] == 123 and out["memory_bytes"] == 456


def test_input_round_trip_with_words_numbers_and_camel_case():
    msg = json_to_message({"strategy": "lora", "datasetPath": "d", "config": {
        "max_steps": "12", "learning_rate": 1, "group_by_length": "true",
        "lora_config": {"target_modules": ["q_proj"], "r": 4.0}}}, train_pb2.StartTrainingRequest)
    assert msg.strategy == train_pb2.STRATEGY_LORA and msg.dataset_path == "d"
    assert msg.config.max_steps == 12 and msg.config.learning_rate == 1.0
    assert msg.config.group_by_length is True and msg.config.lora_config.r == 4
    assert not msg.config.HasField("seed")  # omitted stays unset: the server applies the default
    assert json_to_message({"seed": 2**53 + 1}, inference_pb2.ChatRequest).seed == 2**53 + 1


def test_nulls_and_unknown_fields_are_dropped():
    msg = json_to_message({"model_path": None, "messages": [{"role": "user", "content": "x", "name": "n"}],
                           "extra": 1}, inference_pb2.ChatRequest)
    assert not msg.HasField("model_path") and msg.messages[0].content == "x"


@pytest.mark.parametrize("data,field", [
    ({"max_tokens": "many"}, "max_tokens"),
    ({"max_tokens": 2**31}, "max_tokens"),
    ({"temperature": [1]}, "temperature"),
    ({"enable_thinking": "maybe"}, "enable_thinking"),
    ({"messages": [{"role": 1}]}, "messages[0].role"),
    ({"messages": {"role": "user"}}, "messages"),
    ({"messages": [None]}, "messages[0]"),
    ({"stop": "x"}, "stop"),
])
def test_wrong_types_name_the_field(data, field):
    with pytest.raises(JsonInputError) as err:
        json_to_message(data, inference_pb2.ChatRequest)
    assert [f for f, _ in err.value.violations] == [field]


def test_special_floats_are_accepted():
    msg = json_to_message({"temperature": "NaN", "top_p": float("inf")}, inference_pb2.ChatRequest)
    assert msg.temperature != msg.temperature and msg.top_p == float("inf")


def test_map_values_are_checked():
    with pytest.raises(JsonInputError) as err:
        json_to_message({"metrics": {"loss": "low"}}, train_pb2.TrainingTask)
    assert err.value.violations[0][0] == "metrics['loss']"


def test_template_parsing():
    assert parse_template("/api/train/status/{task_id}") == (
        "/api/train/status/{p0}", [parse_template("/x/{task_id}")[1][0]])
    path, variables = parse_template("/v1/{name=projects/*/files/**}:get")
    assert path == "/v1/{p0:path}:get" and variables[0].field_path == ("name",)
    path, variables = parse_template("/a/{x.y}/b/{z=*}")
    assert path == "/a/{p0}/b/{p1}" and [v.field_path for v in variables] == [("x", "y"), ("z",)]


def test_discovery_covers_every_annotated_rpc():
    specs = {(s.http_method, s.template): s for s in discover_routes()}
    for key in [("POST", "/api/data/validate"), ("POST", "/api/data/process"), ("POST", "/api/train/start"),
                ("GET", "/api/train/status/{task_id}"), ("GET", "/api/train/tasks"),
                ("POST", "/api/inference/chat"), ("POST", "/api/inference/chat/stream"),
                ("POST", "/api/inference/batch"), ("POST", "/api/eval/evaluate"), ("POST", "/api/export/onnx")]:
        assert key in specs, key
    assert specs[("POST", "/api/data/validate")].body == ""
    assert specs[("POST", "/api/data/validate")].envelope.success_field == "is_valid"
    assert specs[("GET", "/api/train/tasks")].envelope.data_field == "tasks"
    assert specs[("POST", "/api/inference/chat/stream")].streaming
    assert specs[("POST", "/api/eval/evaluate")].deadline_seconds == 3600
    assert specs[("GET", "/api/train/status/{task_id}")].backend == "train"

"""Unit tests of the command line that need no server: argument parsing, `--set`, `--split`,
error lines, and the unreachable-service message."""

from __future__ import annotations

import json

import pytest

import services  # noqa: F401
from cli.client import EXIT_UNREACHABLE, EXIT_USAGE, CliError
from cli.main import build_parser, main, parse_split
from cli.train import apply_sets
from tests.support import free_port
from wintrain.train.v1 import train_pb2


def test_set_maps_to_training_config_fields_with_types():
    config = train_pb2.TrainingConfig()
    apply_sets(config, ["max_steps=50", "learning_rate=1e-4", "lora_config.r=16",
                        "lora_config.target_modules=q_proj,v_proj", "group_by_length=true", "optim=adamw_torch",
                        "lora_config.lora_alpha=64", "num_train_epochs=2"])
    assert config.max_steps == 50
    assert config.learning_rate == pytest.approx(1e-4)
    assert config.lora_config.r == 16
    assert list(config.lora_config.target_modules) == ["q_proj", "v_proj"]
    assert config.group_by_length is True
    assert config.optim == "adamw_torch"
    assert config.lora_config.lora_alpha == 64.0
    assert config.num_train_epochs == 2.0
    # Only what was set is present: the server fills its documented defaults.
    assert not config.HasField("warmup_steps")


def test_set_accepts_json_lists_and_mappings():
    config = train_pb2.TrainingConfig()
    apply_sets(config, ['lora_config={"r": 4, "bias": "all"}'])
    assert config.lora_config.r == 4 and config.lora_config.bias == "all"
    config = train_pb2.TrainingConfig()
    apply_sets(config, ["lora_config.target_modules=[q_proj, k_proj, o_proj]"])
    assert list(config.lora_config.target_modules) == ["q_proj", "k_proj", "o_proj"]


@pytest.mark.parametrize("item, fragment", [
    ("max_step=5", "has no field 'max_step'"),
    ("lora_config.rank=5", "LoraConfig has no field 'rank'"),
    ("max_steps=lots", "expected an integer"),
    ("learning_rate=fast", "expected a number"),
    ("max_steps", "expected key=value"),
    ("lora_config=8", "group of settings"),
    ("max_steps.x=1", "has no sub-fields"),
])
def test_set_errors_name_the_key(item, fragment):
    with pytest.raises(CliError) as info:
        apply_sets(train_pb2.TrainingConfig(), [item])
    assert info.value.exit_code == EXIT_USAGE
    assert fragment in info.value.message


def test_split_parsing():
    assert parse_split("0.8/0.1/0.1") == pytest.approx((0.8, 0.1, 0.1))
    assert parse_split("70/20/10") == pytest.approx((0.7, 0.2, 0.1))
    for bad in ("0.8/0.2", "a/b/c", "0.5/-0.1/0.6"):
        with pytest.raises(CliError):
            parse_split(bad)


def test_json_flag_works_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--json", "train", "list"]).json is True
    assert parser.parse_args(["train", "list", "--json"]).json is True
    assert parser.parse_args(["train", "list"]).json is False
    assert parser.parse_args(["status", "--config", "x.yaml"]).config == "x.yaml"


def test_error_line_names_fields_once():
    error = CliError("config.learning_rate: must be > 0", code="INVALID_ARGUMENT",
                     details=[("config.learning_rate", "must be > 0"), ("config.max_steps", "must be >= 0")])
    assert error.line() == ("INVALID_ARGUMENT: config.learning_rate: must be > 0 "
                            "[config.max_steps: must be >= 0]")
    assert error.as_json()["error"]["details"][1] == {"field": "config.max_steps", "description": "must be >= 0"}


def test_bad_set_exits_2_with_one_line(capsys):
    code = main(["train", "start", "--data", "d.jsonl", "--out", "o", "--set", "bogus=1"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wintrain: error: --set bogus")


def test_unreachable_service_is_one_clear_line(monkeypatch, capsys):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("WINTRAIN__SERVICES__TRAIN__PORT", str(port))
    assert main(["train", "list"]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"cannot reach the train service at 127.0.0.1:{port}" in err[0]

    assert main(["--json", "train", "status", "abc"]) == EXIT_UNREACHABLE
    body = json.loads(capsys.readouterr().out)
    assert body["error"]["code"] == "UNAVAILABLE"


def test_status_reports_every_component_down(monkeypatch, capsys):
    for name in ("data", "train", "inference", "eval", "export"):
        monkeypatch.setenv(f"WINTRAIN__SERVICES__{name.upper()}__PORT", str(free_port()))
    monkeypatch.setenv("WINTRAIN__API__PORT", str(free_port()))
    assert main(["status", "--json", "--timeout", "1"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["healthy"] is False
    assert set(body["services"]) == {"data", "train", "inference", "eval", "export"}
    assert all(s["status"] == "UNREACHABLE" for s in body["services"].values())
    assert body["gateway"]["status"] == "UNREACHABLE"


def test_up_forwards_its_options_to_the_launcher(monkeypatch):
    from services.common import launcher

    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        return 0

    monkeypatch.setattr(launcher, "main", fake_main)
    assert main(["up", "--services", "data,train", "--no-gateway", "--timeout", "30", "--log-dir", "logs"]) == 0
    assert seen["argv"] == ["--services", "data,train", "--no-gateway", "--timeout", "30.0", "--log-dir", "logs"]

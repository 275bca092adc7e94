"""In-process gRPC tests of DataService: both RPCs, their errors, and what lands on disk."""

from __future__ import annotations

import json
import shutil

import grpc
import pytest

from services.common.config import REPO_ROOT
from services.common.rpc_status import decode_rpc_error
from services.data.server import register
from tests.support import InProcessServer, make_config
from wintrain.data.v1 import data_pb2, data_pb2_grpc

SAMPLE = REPO_ROOT / "services" / "common" / "assets" / "datasets" / "train_sample.jsonl"
BILINGUAL = REPO_ROOT / "services" / "common" / "assets" / "datasets" / "bilingual_chat.jsonl"


@pytest.fixture
def data_stub(tmp_path):
    cfg = make_config(tmp_path / "ws", tmp_path / "no-model")
    (cfg.workspace / "datasets").mkdir()
    shutil.copy(SAMPLE, cfg.workspace / "datasets" / "train_sample.jsonl")
    shutil.copy(BILINGUAL, cfg.workspace / "datasets" / "bilingual_chat.jsonl")
    with InProcessServer(cfg, "data", register) as server:
        yield data_pb2_grpc.DataServiceStub(server.channel()), cfg


def _error(fn, request):
    with pytest.raises(grpc.RpcError) as err:
        fn(request, timeout=30)
    return decode_rpc_error(err.value)


def test_validate_the_original_sample(data_stub):
    stub, _ = data_stub
    resp = stub.ValidateDataset(data_pb2.ValidateDatasetRequest(file_path="datasets/train_sample.jsonl"), timeout=30)
    assert (resp.is_valid, resp.total_samples, resp.valid_samples, resp.invalid_samples) == (True, 5, 5, 0)
    assert list(resp.error_messages) == []
    assert resp.stats.messages_per_role["user"] == 5 and resp.detected_format == "conversations"


def test_validate_reports_bad_rows_with_lines(data_stub):
    stub, cfg = data_stub
    bad = cfg.workspace / "datasets" / "bad.jsonl"
    bad.write_text(SAMPLE.read_text(encoding="utf-8").splitlines()[0] + "\n"
                   + '{"conversations": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}\n'
                   + "{not json\n", encoding="utf-8")
    resp = stub.ValidateDataset(data_pb2.ValidateDatasetRequest(file_path=str(bad)), timeout=30)
    assert not resp.is_valid and (resp.valid_samples, resp.invalid_samples) == (1, 2)
    assert any(m.startswith("line 2:") and "conversations[1].role" in m and '"bot"' in m for m in resp.error_messages)
    assert any(i.line == 3 for i in resp.issues)


def test_validate_errors_have_the_right_codes(data_stub):
    stub, cfg = data_stub
    fail = _error(stub.ValidateDataset, data_pb2.ValidateDatasetRequest(file_path="../../etc/passwd"))
    assert fail.code == "PERMISSION_DENIED" and "file_path" in fail.message
    assert _error(stub.ValidateDataset, data_pb2.ValidateDatasetRequest(file_path="datasets/none.jsonl")).code == "NOT_FOUND"
    fail = _error(stub.ValidateDataset, data_pb2.ValidateDatasetRequest(file_path="datasets"))
    assert fail.code == "INVALID_ARGUMENT" and fail.field_violations[0][0] == "file_path"
    (cfg.workspace / "empty.jsonl").write_text("")
    assert _error(stub.ValidateDataset, data_pb2.ValidateDatasetRequest(file_path="empty.jsonl")).code == "INVALID_ARGUMENT"


def test_process_and_split_writes_the_original_files(data_stub):
    stub, cfg = data_stub
    req = data_pb2.ProcessDatasetRequest(input_file="datasets/bilingual_chat.jsonl", output_dir="processed/bi")
    req.split_config.SetInParent()  # all defaults: 0.8 / 0.1 / 0.1, shuffle, seed 42
    resp = stub.ProcessDataset(req, timeout=60)
    out = cfg.workspace / "processed" / "bi"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["test.json", "train.json", "val.json"]
    rows = {name: (out / name).read_text(encoding="utf-8").splitlines() for name in ("train.json", "val.json", "test.json")}
    assert [len(rows[n]) for n in ("train.json", "val.json", "test.json")] == [resp.train_samples, resp.val_samples, resp.test_samples]
    assert resp.train_samples + resp.val_samples + resp.test_samples == resp.kept_samples
    assert abs(resp.train_samples / resp.kept_samples - 0.8) < 0.02
    assert not set(rows["train.json"]) & set(rows["test.json"]), "a conversation landed in two splits"
    text = (out / "train.json").read_text(encoding="utf-8")
    assert "\\u" not in text and any("\u4e00" <= ch <= "\u9fff" for ch in text)
    json.loads(rows["train.json"][0])["conversations"]
    # Same input, same split.
    again = stub.ProcessDataset(req, timeout=60)
    assert again.train_samples == resp.train_samples
    assert (out / "train.json").read_text(encoding="utf-8") == text


def test_process_without_split_and_bad_ratios(data_stub):
    stub, cfg = data_stub
    resp = stub.ProcessDataset(data_pb2.ProcessDatasetRequest(input_file="datasets/train_sample.jsonl",
                                                              output_dir="processed/one"), timeout=30)
    assert resp.kept_samples == 5 and (cfg.workspace / "processed" / "one" / "processed.json").is_file()
    req = data_pb2.ProcessDatasetRequest(input_file="datasets/train_sample.jsonl", output_dir="processed/bad")
    req.split_config.train_ratio = 0.9  # + 0.1 + 0.1 = 1.1
    fail = _error(stub.ProcessDataset, req)
    assert fail.code == "INVALID_ARGUMENT" and fail.field_violations[0][0].startswith("split_config")
    assert not (cfg.workspace / "processed" / "bad").exists() or not any((cfg.workspace / "processed" / "bad").iterdir())
    req = data_pb2.ProcessDatasetRequest(input_file="datasets/train_sample.jsonl", output_dir="/tmp/outside")
    assert _error(stub.ProcessDataset, req).code == "PERMISSION_DENIED"
    req = data_pb2.ProcessDatasetRequest(input_file="datasets/train_sample.jsonl", output_dir="p", format_type="csv")
    fail = _error(stub.ProcessDataset, req)
    assert fail.code == "INVALID_ARGUMENT" and fail.field_violations[0][0] == "format_type"


def test_process_refuses_to_overwrite_a_foreign_file(data_stub):
    stub, cfg = data_stub
    out = cfg.workspace / "mine"
    out.mkdir()
    (out / "processed.json").write_text("precious\n", encoding="utf-8")
    req = data_pb2.ProcessDatasetRequest(input_file="datasets/train_sample.jsonl", output_dir="mine")
    assert _error(stub.ProcessDataset, req).code == "ALREADY_EXISTS"
    assert (out / "processed.json").read_text(encoding="utf-8") == "precious\n"
    req.overwrite = True
    assert stub.ProcessDataset(req, timeout=30).kept_samples == 5

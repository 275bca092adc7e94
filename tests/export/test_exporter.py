"""Unit tests of the export domain (no server): option checks, the opset range, renaming a
model with external data, and atomic replacement when the exporter itself fails."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.common.errors import AlreadyExists, Cancelled, FailedPrecondition, InvalidArgument
from services.export import exporter, onnx_export
from services.export.exporter import ExportSpec, run_export, validate_options


def test_supported_opsets_span_the_default_and_stop_at_the_exporters_limit():
    low, high = onnx_export.supported_opsets()
    assert low == 14 == onnx_export.DEFAULT_OPSET
    assert 18 <= high <= onnx_export.ort_max_opset()
    from torch.onnx import _constants

    assert high <= _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def test_validate_options_reports_every_wrong_field():
    validate_options("onnx", 14, True, "exports/a")
    validate_options("safetensors", 999, False, "exports/a")  # opset is not used for safetensors
    with pytest.raises(InvalidArgument) as info:
        validate_options("torchscript", 14, False, "exports/a")
    assert info.value.field_violations[0][0] == "export_format"
    assert "onnx, safetensors" in info.value.message and "not implemented" in info.value.message
    with pytest.raises(InvalidArgument) as info:
        validate_options("onnx", 13, False, "x.onnx")
    assert [f for f, _ in info.value.field_violations] == ["opset_version"]
    with pytest.raises(InvalidArgument) as info:
        validate_options("safetensors", 14, True, "x.ONNX")
    assert {f for f, _ in info.value.field_violations} == {"quantize", "output_path"}


def _model_with_external_data(folder: Path) -> Path:
    """y = x @ W with W stored in `model.onnx_data`, as optimum writes big models."""
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx_data", size_threshold=0)
    return path


def test_renaming_a_model_renames_its_external_data_and_the_references(tmp_path):
    src = _model_with_external_data(tmp_path)
    assert onnx_export.external_data_files(src) == ["model.onnx_data"]
    dst = tmp_path / "chat.onnx"
    onnx_export.rename_onnx_model(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.onnx", "chat.onnx_data"]
    assert onnx_export.external_data_files(dst) == ["chat.onnx_data"]
    assert [p.name for p in onnx_export.onnx_files(dst)] == ["chat.onnx", "chat.onnx_data"]
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((1, 3), dtype=np.float32)})
    assert y.tolist() == [[12.0, 15.0, 18.0, 21.0]]


def _failing_exporter(model, out_dir, *, opset, model_file="model.onnx"):
    (out_dir / model_file).write_bytes(b"half a graph")
    raise FailedPrecondition("the ONNX exporter failed: simulated")


@pytest.mark.slow
@pytest.mark.parametrize("output", ["exports/kept", "exports/kept/chat.onnx"])
def test_a_failed_export_never_damages_the_existing_one(config, ws_model, workspace, monkeypatch, output):
    target = workspace / output
    folder = target if not output.endswith(".onnx") else target.parent
    folder.mkdir(parents=True)
    old = {"model.onnx" if folder == target else "chat.onnx": b"old graph", "config.json": b"{}"}
    for name, data in old.items():
        (folder / name).write_bytes(data)
    monkeypatch.setattr(onnx_export, "export_onnx", _failing_exporter)
    spec = ExportSpec(model_path=ws_model, output_path=target, overwrite=True)
    with pytest.raises(FailedPrecondition, match="simulated"):
        run_export(spec, config)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []


def test_a_cancelled_export_stops_before_writing(config, ws_model, workspace):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run_export(ExportSpec(model_path=ws_model, output_path=workspace / "exports/c"), config, cancel)
    assert not (workspace / "exports").exists()


def _staged(tmp_path: Path, files: dict[str, bytes]) -> Path:
    staging = tmp_path / ".staging"
    staging.mkdir(parents=True)
    for name, data in files.items():
        (staging / name).write_bytes(data)
    return staging


def test_commit_shares_identical_companions_and_refuses_different_ones(tmp_path, config):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.json").write_bytes(b"same")
    (folder / "other.onnx").write_bytes(b"another model")
    spec = ExportSpec(model_path=tmp_path, output_path=folder / "new.onnx")
    exporter._commit_files(_staged(tmp_path, {"new.onnx": b"graph", "config.json": b"same"}), folder, spec, config)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")} == {
        "config.json": b"same", "other.onnx": b"another model", "new.onnx": b"graph"}

    spec = ExportSpec(model_path=tmp_path, output_path=folder / "third.onnx")
    with pytest.raises(AlreadyExists, match="config.json"):
        exporter._commit_files(_staged(tmp_path / "b", {"third.onnx": b"g", "config.json": b"different"}), folder, spec, config)
    assert not (folder / "third.onnx").exists() and (folder / "config.json").read_bytes() == b"same"


def test_overwrite_removes_the_previous_exports_own_data_files(tmp_path, config):
    folder = tmp_path / "out"
    folder.mkdir()
    old = _model_with_external_data(folder)
    onnx_export.rename_onnx_model(old, folder / "chat.onnx")
    (folder / "chat_int8.onnx").write_bytes(b"old int8")
    (folder / "unrelated.txt").write_bytes(b"keep")
    spec = ExportSpec(model_path=tmp_path, output_path=folder / "chat.onnx", overwrite=True)
    exporter._commit_files(_staged(tmp_path, {"chat.onnx": b"new graph", "config.json": b"{}"}), folder, spec, config)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "chat.onnx", "config.json", "unrelated.txt"]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_export_with_external_data_under_a_custom_file_name(config, ws_model, workspace, monkeypatch):
    """Big models keep their weights in external data; the renamed model must still find
    them (the proof loads it with ONNX Runtime and optimum), and int8 quantization too."""
    monkeypatch.setenv("FORCE_ONNX_EXTERNAL_DATA", "1")  # optimum's switch, as for models > 2 GB
    target = workspace / "exports" / "big" / "chat.onnx"
    result = run_export(ExportSpec(model_path=ws_model, output_path=target, quantize=True), config)
    names = {p.name for p in target.parent.iterdir()}
    assert {"chat.onnx", "chat.onnx_data", "chat_int8.onnx", "chat_int8.onnx_data"} <= names
    assert not {"model.onnx", "model.onnx_data"} & names
    assert onnx_export.external_data_files(target) == ["chat.onnx_data"]
    assert onnx_export.external_data_files(target.parent / "chat_int8.onnx") == ["chat_int8.onnx_data"]
    assert {p.name for p, _ in result.files} == names
    assert result.parity.ok and result.parity.max_abs_diff <= 1e-4
    assert result.quantized_parity is not None and result.quantized_size > 0
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "logits"


def _reference(logits: np.ndarray, continuation: list[int]):
    from services.export.parity import Reference

    mask = np.ones((1, 2), dtype=np.int64)
    return Reference(prompts=[[5, 6]], continuations=[continuation], sequence_logits=[logits],
                     batch_ids=np.array([[5, 6]]), batch_mask=mask, batch_logits=logits[None, :2],
                     new_tokens=len(continuation), pad_token_id=0)


def test_the_proof_fails_on_drift_nan_and_different_tokens():
    from services.export.parity import _compare

    logits = np.linspace(-1, 1, 3 * 4, dtype=np.float32).reshape(3, 4)
    ref = _reference(logits, [1, 2])
    same = _compare(ref, [logits.copy()], logits[None, :2].copy(), [[1, 2]], 1e-4)
    assert same.ok and same.max_abs_diff == 0 and same.token_agreement == 1.0

    drifted = logits.copy()
    drifted[2, 3] += 1e-3
    result = _compare(ref, [drifted], logits[None, :2].copy(), [[1, 2]], 1e-4)
    assert not result.ok and result.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert "> tolerance" in result.summary()

    broken = logits.copy()
    broken[0, 0] = np.nan
    assert _compare(ref, [broken], logits[None, :2].copy(), [[1, 2]], 1e-4).max_abs_diff == float("inf")

    result = _compare(ref, [logits.copy()], logits[None, :2].copy(), [[1, 3]], 1e-4)
    assert not result.tokens_match and result.token_agreement == 0.5
    assert "step 2 (PyTorch 2, export 3)" in result.summary()

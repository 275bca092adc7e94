"""An adapter's `adapter_config.json` `base_model_name_or_path` is client input: a base that
resolves outside `storage.allowed_roots` is refused (PERMISSION_DENIED naming the field) by
inference (LoadModel, Chat), eval and export, while one inside the roots and the configured
base model are still used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from services.common.errors import PermissionDenied
from services.common.modeling import check_adapter_base, resolve_model_source
from tests.support import InProcessServer, make_config
from wintrain.eval.v1 import eval_pb2, eval_pb2_grpc
from wintrain.export.v1 import export_pb2, export_pb2_grpc
from wintrain.inference.v1 import inference_pb2 as pb
from wintrain.inference.v1 import inference_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def adapter_ws(tmp_path_factory, tiny_model_dir):
    """A workspace with two LoRA adapters (untrained, PEFT's own files): `evil` names a base
    copied outside the roots, `good` a base copied inside. Also a tiny dataset."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapter-base")
    ws = root / "ws"
    outside = root / "outside" / "base"
    shutil.copytree(tiny_model_dir, outside)
    inside = ws / "models" / "base"
    shutil.copytree(tiny_model_dir, inside)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for name, base in (("evil", outside), ("good", inside)):
        folder = ws / "adapters" / name
        lora.save_pretrained(folder, safe_serialization=True)
        cfg_path = folder / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str(base)
        cfg_path.write_text(json.dumps(cfg))
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    (ws / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"ws": ws, "outside": outside, "inside": inside, "config": make_config(ws, tiny_model_dir)}


def _assert_refused(info, field: str) -> None:
    err = info.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    assert field in err.details() and "base_model_name_or_path" in err.details(), err.details()


def test_the_check_itself(adapter_ws, tiny_model_dir):
    config, ws = adapter_ws["config"], adapter_ws["ws"]
    with pytest.raises(PermissionDenied) as info:
        resolve_model_source(ws / "adapters" / "evil", config, field="model_path")
    assert info.value.field_violations[0][0] == "model_path"
    assert resolve_model_source(ws / "adapters" / "good", config).base_path == adapter_ws["inside"].resolve()
    check_adapter_base(tiny_model_dir, config)  # the configured base model (outside the roots) is allowed
    with pytest.raises(PermissionDenied):
        check_adapter_base(adapter_ws["outside"], config, field="config.model_path")
    # A symlink inside the roots that points out is followed, then refused.
    (ws / "link").symlink_to(adapter_ws["outside"])
    try:
        with pytest.raises(PermissionDenied):
            check_adapter_base(ws / "link", config)
    finally:
        (ws / "link").unlink()


def test_inference_refuses_an_outside_base(adapter_ws):
    from services.inference.server import register

    config = adapter_ws["config"].with_overrides({"inference.auto_load": False})
    with InProcessServer(config, "inference", register) as server:
        stub = pb_grpc.InferenceServiceStub(server.channel())
        with pytest.raises(grpc.RpcError) as info:
            stub.LoadModel(pb.LoadModelRequest(model_path="adapters/evil"), timeout=120)
        _assert_refused(info, "model_path")
        chat = pb.ChatRequest(model_path="adapters/evil", messages=[pb.ChatMessage(role="user", content="hi")],
                              max_tokens=2)
        with pytest.raises(grpc.RpcError) as info:
            stub.Chat(chat, timeout=120)
        _assert_refused(info, "model_path")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ChatStream(chat, timeout=120))
        _assert_refused(info, "model_path")
        loaded = stub.LoadModel(pb.LoadModelRequest(model_path="adapters/good"), timeout=120)
        assert loaded.base_model_path == str(adapter_ws["inside"].resolve())


def test_eval_refuses_an_outside_base(adapter_ws):
    from services.eval.server import register

    with InProcessServer(adapter_ws["config"], "eval", register) as server:
        stub = eval_pb2_grpc.EvalServiceStub(server.channel())
        with pytest.raises(grpc.RpcError) as info:
            stub.Evaluate(eval_pb2.EvaluateRequest(model_path="adapters/evil", dataset_path="data.jsonl"),
                          timeout=120)
        _assert_refused(info, "model_path")


def test_export_refuses_an_outside_base(adapter_ws):
    from services.export.server import register

    with InProcessServer(adapter_ws["config"], "export", register) as server:
        stub = export_pb2_grpc.ExportServiceStub(server.channel())
        for fields, field in (({"model_path": "adapters/evil"}, "model_path"),
                              ({"model_path": "models/base", "lora_adapter_path": "adapters/evil"},
                               "lora_adapter_path")):
            with pytest.raises(grpc.RpcError) as info:
                stub.ExportOnnx(export_pb2.ExportOnnxRequest(output_path="exports/evil.onnx", **fields),
                                timeout=300)
            _assert_refused(info, field)
        assert not (adapter_ws["ws"] / "exports" / "evil.onnx").exists()

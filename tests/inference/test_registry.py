"""In-process gRPC tests of the model registry: resolution (full, adapter, default, bad paths),
LRU eviction by count and bytes, single-flight loading, unloading, auto_load health gating."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.rpc_status import decode_rpc_error
from services.inference.registry import default_loader
from tests.inference.conftest import chat, copy_model, inference_server
from tests.support import make_config, wait_for_health
from wintrain.inference.v1 import inference_pb2 as pb


def make_adapter(base_dir, out_dir, *, seed: int = 0):
    """A LoRA adapter on the tiny model with random (nonzero) weights, saved like training does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(out_dir)
    return out_dir


def _code(exc_info) -> str:
    return decode_rpc_error(exc_info.value).code


def test_resolves_full_adapter_and_default_models(config, ws_model, tiny_model_dir, workspace):
    adapter = make_adapter(tiny_model_dir, workspace / "adapters" / "a1")
    with inference_server(config) as (_server, stub, servicer):
        full = stub.LoadModel(pb.LoadModelRequest(model_path="models/tiny-chat"), timeout=120)
        assert full.kind == "full" and full.path == str(ws_model.resolve()) and not full.is_default
        assert full.parameters > 1_000_000 and full.memory_bytes >= 4 * full.parameters
        assert full.device == "cpu" and full.dtype == "float32"

        ad = stub.LoadModel(pb.LoadModelRequest(model_path=str(adapter)), timeout=120)
        assert ad.kind == "adapter" and ad.path == str(adapter.resolve())
        assert ad.base_model_path == str(tiny_model_dir.resolve())

        default = stub.LoadModel(pb.LoadModelRequest(), timeout=120)
        assert default.is_default and default.kind == "full" and default.path == str(tiny_model_dir.resolve())

        # Loading again is a no-op.
        stub.LoadModel(pb.LoadModelRequest(model_path="models/tiny-chat"), timeout=60)
        assert servicer.registry.loads == 3

        listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
        assert [m.path for m in listed.models] == [full.path, default.path, ad.path]  # most recent first
        page1 = stub.ListModels(pb.ListModelsRequest(page_size=2), timeout=10)
        assert len(page1.models) == 2 and page1.next_page_token
        page2 = stub.ListModels(pb.ListModelsRequest(page_size=2, page_token=page1.next_page_token), timeout=10)
        assert [m.path for m in page2.models] == [ad.path] and not page2.next_page_token

        # A chat without model_path is answered by the default model.
        reply = stub.Chat(chat("hi", max_tokens=3, temperature=0), timeout=60)
        assert reply.model == str(tiny_model_dir) or reply.model == str(tiny_model_dir.resolve())


def test_bad_model_paths_get_the_right_codes(config, workspace):
    (workspace / "not-a-model").mkdir()
    (workspace / "file.txt").write_text("x")
    with inference_server(config) as (_server, stub, _servicer):
        cases = {
            "models/missing": "NOT_FOUND",
            "/etc": "PERMISSION_DENIED",
            "../outside": "PERMISSION_DENIED",
            "not-a-model": "FAILED_PRECONDITION",
            "file.txt": "FAILED_PRECONDITION",
        }
        for path, code in cases.items():
            with pytest.raises(grpc.RpcError) as err:
                stub.LoadModel(pb.LoadModelRequest(model_path=path), timeout=30)
            assert _code(err) == code, path
            with pytest.raises(grpc.RpcError) as err:
                stub.Chat(chat("hi", model_path=path, max_tokens=2), timeout=30)
            failure = decode_rpc_error(err.value)
            assert failure.code == code, path
            assert "model_path" in failure.message
        with pytest.raises(grpc.RpcError) as err:
            stub.UnloadModel(pb.UnloadModelRequest(model_path="models/missing"), timeout=10)
        assert _code(err) == "NOT_FOUND"
        with pytest.raises(grpc.RpcError) as err:
            stub.ListModels(pb.ListModelsRequest(page_token="bogus"), timeout=10)
        assert decode_rpc_error(err.value).field_violations[0][0] == "page_token"


def test_adapter_without_its_base_is_failed_precondition(tiny_model_dir, workspace):
    adapter = make_adapter(tiny_model_dir, workspace / "adapters" / "orphan")
    # Neither the adapter's recorded base nor the configured base exists.
    cfg = make_config(workspace, workspace / "no-such-base")
    text = (adapter / "adapter_config.json").read_text().replace(str(tiny_model_dir), "/nonexistent/base")
    (adapter / "adapter_config.json").write_text(text)
    with inference_server(cfg) as (_server, stub, _servicer):
        with pytest.raises(grpc.RpcError) as err:
            stub.LoadModel(pb.LoadModelRequest(model_path="adapters/orphan"), timeout=30)
        assert _code(err) == "FAILED_PRECONDITION"


def test_lru_eviction_by_count_and_unload(config, tiny_model_dir, workspace):
    paths = [copy_model(tiny_model_dir, workspace / "models" / name) for name in ("a", "b", "c")]
    cfg = config.with_overrides({"inference.cache_max_models": 2})
    with inference_server(cfg) as (_server, stub, _servicer):
        for rel in ("models/a", "models/b", "models/a", "models/c"):
            stub.LoadModel(pb.LoadModelRequest(model_path=rel), timeout=60)
        listed = [m.path for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models]
        assert listed == [str(paths[2].resolve()), str(paths[0].resolve())]  # b was least recently used

        gone = stub.UnloadModel(pb.UnloadModelRequest(model_path="models/a"), timeout=10)
        assert gone.model_path == str(paths[0].resolve()) and gone.freed_bytes > 0
        # The exact path ListModels shows works too.
        stub.UnloadModel(pb.UnloadModelRequest(model_path=listed[0]), timeout=10)
        assert not stub.ListModels(pb.ListModelsRequest(), timeout=10).models


def test_lru_eviction_by_bytes(config, tiny_model_dir, workspace):
    for name in ("a", "b"):
        copy_model(tiny_model_dir, workspace / "models" / name)
    with inference_server(config) as (_server, stub, servicer):
        size = stub.LoadModel(pb.LoadModelRequest(model_path="models/a"), timeout=60).memory_bytes
        servicer.registry.max_bytes = int(size * 1.5)  # room for one model only
        stub.LoadModel(pb.LoadModelRequest(model_path="models/b"), timeout=60)
        listed = [m.path for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models]
        assert listed == [str((workspace / "models" / "b").resolve())]


def test_two_requests_for_an_unloaded_model_load_it_once(config, ws_model):
    gate = threading.Event()
    calls = []

    def slow_loader(source, cfg):
        calls.append(source.path)
        assert gate.wait(30)
        return default_loader(source, cfg)

    with inference_server(config, loader=slow_loader) as (_server, stub, servicer):
        first = stub.LoadModel.future(pb.LoadModelRequest(model_path="models/tiny-chat"), timeout=60)
        second = stub.Chat.future(chat("hi", model_path="models/tiny-chat", max_tokens=2, temperature=0), timeout=60)
        for _ in range(100):  # until both requests are inside the server
            if calls and servicer.limiter.running == 1:
                break
            threading.Event().wait(0.05)
        gate.set()
        assert first.result().kind == "full"
        assert second.result().usage.completion_tokens >= 1
        assert len(calls) == 1 and servicer.registry.loads == 1


def test_auto_load_reports_not_serving_until_the_default_model_is_loaded(config):
    gate = threading.Event()

    def held_loader(source, cfg):
        assert gate.wait(30)
        return default_loader(source, cfg)

    cfg = config.with_overrides({"inference.auto_load": True})
    with inference_server(cfg, loader=held_loader) as (server, stub, _servicer):
        health = health_pb2_grpc.HealthStub(server.channel())
        for name in ("", "wintrain.inference.v1.InferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING, name
        gate.set()
        wait_for_health(server.address, timeout=60)
        wait_for_health(server.address, timeout=10, service="wintrain.inference.v1.InferenceService")
        models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
        assert len(models) == 1 and models[0].is_default

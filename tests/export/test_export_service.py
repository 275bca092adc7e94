"""ExportService through a real in-process gRPC server: exports of the base model and of a LoRA
adapter, checked independently of the service's own proof; `.onnx` file vs folder targets;
bad input; atomic replacement."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from services.common.rpc_status import decode_rpc_error
from services.export.server import register
from tests.export.helpers import (
    PROMPTS,
    call_export,
    expect_error,
    greedy,
    ort_model,
    prompt_ids,
    torch_logits,
)
from tests.support import InProcessServer
from wintrain.export.v1 import export_pb2_grpc

BASE = "models/tiny-chat"


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders an export left behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def tiny(export_ws):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = export_ws / BASE
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def base_export(stub):
    return call_export(stub, model_path=BASE, output_path="exports/base", quantize=True)


@pytest.fixture(scope="module")
def lora_adapter(export_ws, tiny) -> Path:
    """A LoRA adapter with non-zero weights (B is random, not zero), saved in the workspace."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(export_ws / BASE), dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                                 init_lora_weights=False, lora_dropout=0.0))
    out = export_ws / "models" / "lora"
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def merged_lora(export_ws, lora_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(export_ws / BASE), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(lora_adapter)).merge_and_unload().eval()


# -- the base export --------------------------------------------------------------------------

@pytest.mark.slow
def test_base_export_passes_its_proof_and_lists_its_files(base_export, export_ws):
    r = base_export
    assert r.success
    assert (r.export_format, r.opset_version, r.export_path) == ("onnx", 14, "exports/base")
    p = r.parity
    assert p.tolerance == pytest.approx(1e-4)
    assert 0 <= p.max_abs_diff <= p.tolerance
    assert p.tokens_match and p.token_agreement == 1.0
    assert p.prompts_checked >= 3 and p.tokens_per_prompt == 16
    names = {Path(f.path).name for f in r.files}
    assert {"model.onnx", "model_int8.onnx", "config.json", "generation_config.json",
            "tokenizer.json", "tokenizer_config.json"} <= names
    for f in r.files:
        assert (export_ws / f.path).stat().st_size == f.size_bytes > 0
    assert r.file_size == sum(f.size_bytes for f in r.files)
    assert r.export_time > 0
    assert "max |diff|" in r.message and "opset 14" in r.message
    assert leftovers(export_ws / "exports") == [] and leftovers(export_ws / "exports" / "base") == []


@pytest.mark.slow
def test_base_export_is_a_kv_cache_graph(base_export, export_ws):
    graph = onnx.load(str(export_ws / "exports/base/model.onnx"), load_external_data=False)
    inputs = [i.name for i in graph.graph.input]
    outputs = [o.name for o in graph.graph.output]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert "past_key_values.0.key" in inputs and "present.0.value" in outputs and outputs[0] == "logits"
    assert {(o.domain, o.version) for o in graph.opset_import} >= {("", 14)}


@pytest.mark.slow
def test_base_export_matches_pytorch_on_prompts_the_service_never_saw(base_export, export_ws, tiny):
    model, tokenizer = tiny
    ort = ort_model(export_ws / "exports/base")
    for conversation in PROMPTS:
        ids = prompt_ids(tokenizer, conversation)
        ort_logits = ort(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
        assert np.abs(ort_logits - torch_logits(model, ids)).max() < 1e-4
        assert greedy(ort, ids) == greedy(model, ids)


@pytest.mark.slow
def test_quantized_model_is_smaller_runs_and_is_reported(base_export, export_ws, tiny):
    r = base_export
    assert r.quantized_path == "exports/base/model_int8.onnx"
    quantized = export_ws / r.quantized_path
    fp32 = export_ws / "exports/base/model.onnx"
    assert r.quantized_size == quantized.stat().st_size
    assert r.quantized_size < 0.5 * fp32.stat().st_size
    q = r.quantized_parity
    assert q.prompts_checked == r.parity.prompts_checked and q.tokens_per_prompt == 16
    assert q.max_abs_diff > r.parity.max_abs_diff  # int8 weights really differ from fp32
    assert 0.0 <= q.token_agreement <= 1.0
    _, tokenizer = tiny
    ids = prompt_ids(tokenizer, PROMPTS[0])
    assert len(greedy(ort_model(quantized.parent, quantized.name), ids, n=4)) == 4


# -- targets ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_onnx_file_path_names_the_model_file(stub, export_ws, tiny):
    r = call_export(stub, model_path=BASE, output_path="exports/single/tiny-chat.onnx")
    assert r.success and r.export_path == "exports/single/tiny-chat.onnx"
    folder = export_ws / "exports" / "single"
    names = {p.name for p in folder.iterdir()}
    assert {"tiny-chat.onnx", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert "model.onnx" not in names and not leftovers(folder)
    assert {Path(f.path).name for f in r.files} == names
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer, PROMPTS[1])
    assert greedy(ort_model(folder, "tiny-chat.onnx"), ids) == greedy(model, ids)

    before = snapshot(folder)
    err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path="exports/single/tiny-chat.onnx"))
    assert err.code == "ALREADY_EXISTS" and "overwrite" in err.message
    assert snapshot(folder) == before


def test_existing_folder_without_overwrite_is_already_exists(stub, export_ws):
    target = export_ws / "exports" / "occupied"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path="exports/occupied"))
    assert err.code == "ALREADY_EXISTS"
    assert ("output_path", "already exists") in err.field_violations
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_overwrite_replaces_the_existing_export(stub, export_ws):
    target = export_ws / "exports" / "replace"
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"old graph")
    (target / "config.json").write_text("{}")
    (target / "stale.txt").write_text("old export")
    r = call_export(stub, model_path=BASE, output_path="exports/replace", overwrite=True)
    assert r.success
    names = {p.name for p in target.iterdir()}
    assert "stale.txt" not in names and {"model.onnx", "tokenizer.json"} <= names
    assert (target / "model.onnx").stat().st_size > 1000
    assert leftovers(export_ws / "exports") == []


def test_overwrite_never_replaces_a_folder_that_is_not_an_export(stub, export_ws):
    target = export_ws / "datasets-like"
    target.mkdir()
    (target / "train.jsonl").write_text("{}\n")
    err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path="datasets-like", overwrite=True))
    assert err.code == "FAILED_PRECONDITION" and "not hold an export" in err.message
    assert [p.name for p in target.iterdir()] == ["train.jsonl"]
    for root in (".", str(export_ws)):
        err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path=root, overwrite=True))
        assert err.code == "INVALID_ARGUMENT" and "storage root" in err.message


@pytest.mark.slow
def test_failed_export_leaves_the_existing_export_intact(base_export, export_config, export_ws):
    """A proof that cannot pass (tolerance 1e-12) fails the export: FAILED_PRECONDITION with the
    numbers, the export it was to overwrite unchanged, nothing left behind."""
    before = snapshot(export_ws / "exports" / "base")
    strict = export_config.with_overrides({"export.parity_tolerance": 1e-12})
    with InProcessServer(strict, "export", register) as server:
        stub = export_pb2_grpc.ExportServiceStub(server.channel())
        err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path="exports/base", overwrite=True))
    assert err.code == "FAILED_PRECONDITION"
    assert "parity" in err.message and "max |diff|" in err.message and "tolerance 1e-12" in err.message
    assert snapshot(export_ws / "exports" / "base") == before
    assert leftovers(export_ws / "exports") == []


# -- LoRA and safetensors -----------------------------------------------------------------------

@pytest.mark.slow
def test_lora_adapter_export_equals_the_merged_model(stub, export_ws, lora_adapter, merged_lora, tiny):
    r = call_export(stub, model_path="models/lora", output_path="exports/lora")
    assert r.success and r.parity.tokens_match and r.parity.max_abs_diff <= 1e-4
    assert "merged" in r.message
    base, tokenizer = tiny
    ort = ort_model(export_ws / "exports/lora")
    for conversation in PROMPTS:
        ids = prompt_ids(tokenizer, conversation)
        got = ort(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
        assert np.abs(got - torch_logits(merged_lora, ids)).max() < 1e-4
        # the adapter really changed the model, so the comparison above means something
        assert np.abs(got - torch_logits(base, ids)).max() > 1e-2
        assert greedy(ort, ids) == greedy(merged_lora, ids)


@pytest.mark.slow
def test_safetensors_export_of_base_plus_lora_adapter_path(stub, export_ws, lora_adapter, merged_lora, tiny):
    from transformers import AutoModelForCausalLM

    r = call_export(stub, model_path=BASE, lora_adapter_path="models/lora", output_path="exports/merged",
                    export_format="safetensors")
    assert r.success and r.export_format == "safetensors" and r.opset_version == 0
    assert r.parity.max_abs_diff < 1e-6 and r.parity.tokens_match
    folder = export_ws / "exports" / "merged"
    names = {p.name for p in folder.iterdir()}
    assert "model.safetensors" in names and "adapter_config.json" not in names and "tokenizer.json" in names
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    _, tokenizer = tiny
    ids = prompt_ids(tokenizer, PROMPTS[0])
    assert np.abs(torch_logits(reloaded, ids) - torch_logits(merged_lora, ids)).max() < 1e-5


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 21, 99])
def test_unsupported_opset_is_invalid_argument(stub, export_ws, opset):
    err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path="exports/bad-opset", opset_version=opset))
    assert err.code == "INVALID_ARGUMENT"
    assert [f for f, _ in err.field_violations] == ["opset_version"]
    assert "14 to 20" in err.message
    assert not (export_ws / "exports" / "bad-opset").exists()


@pytest.mark.parametrize("fmt", ["torchscript", "pickle"])
def test_unknown_format_is_invalid_argument_listing_the_formats(stub, fmt):
    err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path="exports/x", export_format=fmt))
    assert err.code == "INVALID_ARGUMENT"
    assert [f for f, _ in err.field_violations] == ["export_format"]
    assert "onnx, safetensors" in err.message


def test_safetensors_options_that_make_no_sense_are_refused(stub):
    err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path="exports/m.onnx",
                                        export_format="safetensors", quantize=True))
    assert err.code == "INVALID_ARGUMENT"
    assert {f for f, _ in err.field_violations} == {"quantize", "output_path"}


def test_paths_outside_the_roots_are_permission_denied(stub, export_ws, tmp_path):
    outside = tmp_path / "outside"
    for fields in (
        dict(model_path=BASE, output_path=str(outside)),
        dict(model_path=BASE, output_path="../escape.onnx"),
        dict(model_path=str(tmp_path), output_path="exports/y"),
        dict(model_path=BASE, lora_adapter_path="/etc", output_path="exports/y"),
    ):
        err = decode_rpc_error(expect_error(stub, **fields))
        assert err.code == "PERMISSION_DENIED", fields
    assert not outside.exists() and not (export_ws.parent / "escape.onnx").exists()


def test_missing_model_is_not_found_and_non_model_is_failed_precondition(stub, export_ws):
    assert decode_rpc_error(expect_error(stub, model_path="models/nope", output_path="exports/z")).code == "NOT_FOUND"
    (export_ws / "not-a-model").mkdir(exist_ok=True)
    err = decode_rpc_error(expect_error(stub, model_path="not-a-model", output_path="exports/z"))
    assert err.code == "FAILED_PRECONDITION"
    assert not (export_ws / "exports" / "z").exists()


def test_output_replacing_the_source_model_is_refused(stub, export_ws):
    err = decode_rpc_error(expect_error(stub, model_path=BASE, output_path="models", overwrite=True))
    assert err.code == "INVALID_ARGUMENT" and ("output_path" in dict(err.field_violations))
    assert (export_ws / BASE / "config.json").is_file()


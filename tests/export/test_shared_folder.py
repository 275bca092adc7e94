"""`.onnx` file targets sharing one folder (issue 16), and `export_path` echoed in the
client's form over the gateway (issue 15 item 15). Real export server, real gateway, real
ONNX Runtime."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest

from services.common.rpc_status import decode_rpc_error
from tests.export.helpers import PROMPTS, call_export, expect_error, greedy, ort_model, prompt_ids
from tests.gateway.helpers import gateway_over

BASE = "models/tiny-chat"


@pytest.fixture(scope="module")
def gateway(export_config, export_server):
    with gateway_over(export_config, {"export": export_server}) as gw:
        yield gw


@pytest.fixture(scope="module")
def tiny(export_ws):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = export_ws / BASE
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


@pytest.mark.slow
def test_two_exports_in_one_folder_both_answer_and_paths_echo_the_clients_form(
        gateway, stub, export_ws, tiny):
    folder = export_ws / "exports" / "shared"
    absolute = str(folder / "a.onnx")
    r = httpx.post(f"{gateway.url}/api/export/onnx", json={"model_path": BASE, "output_path": absolute},
                   timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["export_path"] == absolute  # absolute in, absolute out
    assert os.path.getsize(body["export_path"]) > 1000
    assert all(os.path.isabs(f["path"]) for f in body["files"])

    r = httpx.post(f"{gateway.url}/api/export/onnx", json={"model_path": BASE, "output_path": "exports/shared/c.onnx"},
                   timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["export_path"] == "exports/shared/c.onnx"  # relative in, relative out

    model, tokenizer = tiny
    ids = prompt_ids(tokenizer, PROMPTS[0])
    want = greedy(model, ids)
    for name in ("a.onnx", "c.onnx"):
        assert greedy(ort_model(folder, name), ids) == want, name


@pytest.mark.slow
def test_a_different_model_never_replaces_another_exports_companions(gateway, stub, export_ws, tiny):
    folder = export_ws / "exports" / "mixed"
    assert call_export(stub, model_path=BASE, output_path="exports/mixed/a.onnx").success
    config_before = (folder / "config.json").read_bytes()

    other = export_ws / "models" / "other"
    shutil.copytree(export_ws / BASE, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["max_position_embeddings"] = cfg.get("max_position_embeddings", 2048) // 2
    (other / "config.json").write_text(json.dumps(cfg))

    for overwrite in (False, True):
        err = decode_rpc_error(expect_error(stub, model_path="models/other", output_path="exports/mixed/b.onnx",
                                            overwrite=overwrite))
        assert err.code == "ALREADY_EXISTS", err.message
        assert "exports/mixed/b.onnx" in err.message and "output_path" in err.message
        assert err.field_violations and err.field_violations[0][0] == "output_path"
    r = httpx.post(f"{gateway.url}/api/export/onnx",
                   json={"model_path": "models/other", "output_path": "exports/mixed/b.onnx", "overwrite": True},
                   timeout=300)
    assert r.status_code == 409, r.text

    assert not (folder / "b.onnx").exists()
    assert (folder / "config.json").read_bytes() == config_before
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer, PROMPTS[1])
    assert greedy(ort_model(folder, "a.onnx"), ids) == greedy(model, ids)
    # Re-exporting a.onnx itself with overwrite is still allowed.
    assert call_export(stub, model_path=BASE, output_path="exports/mixed/a.onnx", overwrite=True).success

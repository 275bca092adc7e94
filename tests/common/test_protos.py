"""The generated stubs match protos/, and buf lint passes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools import buf_lint
from tools.protogen import PROTO_ROOT, generate, generated_files


def test_generated_stubs_are_not_stale(tmp_path):
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in generate(tmp_path)}
    committed = {p.relative_to(PROTO_ROOT): p.read_bytes() for p in generated_files()}
    assert set(fresh) == set(committed), "stubs missing or extra: run `make protos`"
    stale = sorted(str(k) for k in fresh if fresh[k] != committed[k])
    assert not stale, f"stale stubs (run `make protos`): {stale}"


def test_every_original_endpoint_is_annotated():
    from google.api import annotations_pb2

    from wintrain.data.v1 import data_pb2
    from wintrain.eval.v1 import eval_pb2
    from wintrain.export.v1 import export_pb2
    from wintrain.inference.v1 import inference_pb2
    from wintrain.train.v1 import train_pb2

    routes = set()
    for module in (data_pb2, train_pb2, inference_pb2, eval_pb2, export_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                routes.add((verb.upper(), getattr(rule, verb)))
    expected = {
        ("POST", "/api/data/validate"), ("POST", "/api/data/process"), ("POST", "/api/train/start"),
        ("GET", "/api/train/status/{task_id}"), ("GET", "/api/train/tasks"),
        ("POST", "/api/inference/chat"), ("POST", "/api/inference/chat/stream"),
        ("POST", "/api/inference/batch"), ("POST", "/api/eval/evaluate"), ("POST", "/api/export/onnx"),
        ("GET", "/api/train/watch/{task_id}"), ("POST", "/api/train/cancel/{task_id}"),
        ("POST", "/api/train/resume/{task_id}"),
    }
    assert expected <= routes


def test_buf_lint_passes():
    if buf_lint.find_buf() is None:
        pytest.skip("buf is not installed (`make tools` installs it from the npm registry)")
    proc = subprocess.run([sys.executable, "-m", "tools.buf_lint"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

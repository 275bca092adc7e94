"""Export fixtures: one workspace, one server and one base export per module, so the slow
part (exporting) runs as few times as possible."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.export.server import register
from tests.support import InProcessServer, make_config
from wintrain.export.v1 import export_pb2_grpc


@pytest.fixture(scope="module")
def export_ws(tmp_path_factory, tiny_model_dir) -> Path:
    ws = tmp_path_factory.mktemp("export") / "ws"
    ws.mkdir()
    shutil.copytree(tiny_model_dir, ws / "models" / "tiny-chat")
    return ws


@pytest.fixture(scope="module")
def export_config(export_ws, tiny_model_dir):
    return make_config(export_ws, tiny_model_dir)


@pytest.fixture(scope="module")
def export_server(export_config):
    with InProcessServer(export_config, "export", register) as server:
        yield server


@pytest.fixture(scope="module")
def stub(export_server) -> export_pb2_grpc.ExportServiceStub:
    return export_pb2_grpc.ExportServiceStub(export_server.channel())

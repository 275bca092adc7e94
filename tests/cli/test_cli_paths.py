"""cli.paths: an existing path typed from the current folder inside the workspace is sent
workspace-relative; anything else is sent as typed. Then the README's form end to end:
`wintrain data validate var/datasets/…` from the folder above the workspace."""

from __future__ import annotations

import os

from cli.client import EXIT_OK
from cli.paths import to_workspace
from tests.support import make_config


def test_existing_paths_inside_the_workspace_become_workspace_relative(tmp_path):
    ws = tmp_path / "var"
    (ws / "datasets").mkdir(parents=True)
    (ws / "datasets" / "a.jsonl").write_text("{}\n")
    (tmp_path / "README.md").write_text("x")
    config = make_config(ws, ws / "models" / "m")
    assert to_workspace("var/datasets/a.jsonl", config, cwd=tmp_path) == "datasets/a.jsonl"
    assert to_workspace("./var/datasets/../datasets/a.jsonl", config, cwd=tmp_path) == "datasets/a.jsonl"
    # already workspace-relative from inside the workspace, or missing, or outside it: as typed
    assert to_workspace("datasets/a.jsonl", config, cwd=ws) == "datasets/a.jsonl"
    assert to_workspace("datasets/a.jsonl", config, cwd=tmp_path) == "datasets/a.jsonl"
    assert to_workspace("var/datasets/missing.jsonl", config, cwd=tmp_path) == "var/datasets/missing.jsonl"
    assert to_workspace("README.md", config, cwd=tmp_path) == "README.md"
    assert to_workspace("var", config, cwd=tmp_path) == "var"
    assert to_workspace(str(ws / "datasets" / "a.jsonl"), config, cwd=tmp_path) == str(ws / "datasets" / "a.jsonl")
    assert to_workspace("", config) == "" and to_workspace(None, config) is None


def test_validate_takes_the_path_typed_from_above_the_workspace(stack, wintrain, monkeypatch):
    monkeypatch.setenv("WINTRAIN__STORAGE__WORKSPACE", str(stack.workspace))
    monkeypatch.chdir(stack.workspace.parent)
    typed = f"{stack.workspace.name}/datasets/train_sample.jsonl"
    assert os.path.isfile(typed)
    run = wintrain("data", "validate", typed, "--json")
    assert run.code == EXIT_OK, run.out + run.err
    assert run.json()["is_valid"] is True and run.json()["total_samples"] == 5


def test_not_found_names_the_base_and_the_workspace_form(tmp_path):
    import pytest

    from services.common.config import Config
    from services.common.errors import NotFound
    from services.common.paths import resolve_allowed_path

    ws = tmp_path / "var"
    (ws / "models" / "tiny-chat").mkdir(parents=True)
    config = Config(make_config(ws, ws / "models" / "tiny-chat").as_dict(), tmp_path)  # config file in tmp_path
    with pytest.raises(NotFound) as caught:
        resolve_allowed_path("var/models/tiny-chat", config, field="model_path", must_exist=True)
    message = str(caught.value)
    assert f"resolved against the workspace {ws.resolve()}" in message or f"workspace {ws}" in message, message
    assert "did you mean 'models/tiny-chat'?" in message, message
    with pytest.raises(NotFound) as other:
        resolve_allowed_path("models/nope", config, field="model_path", must_exist=True)
    assert "resolved against the workspace" in str(other.value) and "did you mean" not in str(other.value)
